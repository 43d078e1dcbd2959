"""Progress bars: tqdm on a terminal; a plain line every `LINE_INTERVAL_S` seconds when stderr is
a file or a pipe, so that logs of long runs stay readable (no carriage-return redraws)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

#: seconds between two progress lines when stderr is not a terminal
LINE_INTERVAL_S = 30.0


class LineBar(tqdm):
    """A tqdm that prints its status as a whole line, at most every `mininterval` seconds (and
    once at the end), instead of redrawing one line in place."""

    _last_line = -math.inf   # monotonic time of the last line written
    _closing = False
    last_print_n: int        # tqdm's, set in its __init__ (declared: its stubs leave it untyped)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg == "" or self.fp is None:   # tqdm clears a closed bar with an empty message; a
            return False                   # False answer also spares the "\r" it sends after
        now = time.monotonic()
        # set_postfix / refresh call display directly, past tqdm's own mininterval check
        if not self._closing and now - self._last_line < self.mininterval:
            return True
        self._last_line = now
        self.fp.write((msg if msg is not None else self.__str__()) + "\n")
        self.fp.flush()
        return True

    def close(self) -> None:
        if not self.disable and not self._closing:
            self._closing = True
            if self.n != self.last_print_n:    # the final state, once
                self.display()
                self.last_print_n = self.n
        super().close()


def _interactive(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_bar(iterable: Iterable[Any] | None = None, *, total: int | None = None,
                 desc: str = "", unit: str = "it", enabled: bool = True,
                 leave: bool = False) -> tqdm:
    """A progress bar over `iterable` / `total`: tqdm on a terminal, `LineBar` otherwise;
    `enabled=False` makes it silent."""
    if _interactive(sys.stderr):
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled,
                    leave=leave, dynamic_ncols=True)
    return LineBar(iterable, total=total, desc=desc, unit=unit, disable=not enabled, leave=leave,
                   mininterval=LINE_INTERVAL_S, ascii=True, ncols=100, file=sys.stderr)
