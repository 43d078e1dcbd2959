"""How rls3's processes run: the memory allocator (tcmalloc when the machine has it, glibc malloc
otherwise) and the OpenMP wait policy, both set once by the entry points.

With glibc malloc every large activation of the VLM towers is a fresh mmap faulted in page by page
and unmapped again, so the kernel spends more CPU than the model (lite evaluation: 2.95 M minor
faults, 8.6 s system vs 6.1 s user for 64 images); tcmalloc keeps freed memory cached and makes
evaluation ~1.6x and fine-tuning ~2.3x faster. A preloaded allocator cannot be switched on from
inside a running process, so the entry points (`rls3 ...`, the test suite, the benchmarks)
re-execute themselves once with ``LD_PRELOAD`` set (`ensure`). ``RLS3_ALLOCATOR=system`` keeps glibc malloc;
``RLS3_TCMALLOC=/path/libtcmalloc_minimal.so.4`` names a library outside the usual places.
OpenMP threads (torch's CPU pool) are told to sleep rather than spin between parallel regions
(``OMP_WAIT_POLICY=PASSIVE`` unless set): spinning threads took the cores from the renderer and
from other processes, and 2-thread VLM feedback on a loaded 2-core machine ran 10x slower.
Results depend on neither (a test compares a tiny loop's metrics under both allocators).
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "RLS3_ALLOCATOR"
LIB_VAR = "RLS3_TCMALLOC"  # a tcmalloc library outside the usual places (conda, Homebrew, ...)
CHOICES = ("tcmalloc", "system")
_LIBRARIES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
             "/usr/local/lib", "/opt/homebrew/lib")
#: environment defaults every rls3 process gets (a value the user set is kept); read by libgomp
#: when torch loads it, so they are set before torch is imported or carried by the re-execution
ENV_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}
INSTALL_HINT = "apt-get install libtcmalloc-minimal4 (setup.sh does this when run as root)"


class AllocatorError(ValueError):
    """``RLS3_ALLOCATOR`` holds a value rls3 does not know."""


@dataclass(frozen=True)
class AllocatorStatus:
    """The allocator in use, the one asked for, and (when they differ) why, for the log."""

    active: str            # "tcmalloc" or "glibc"
    wanted: str            # "tcmalloc" or "system"
    library: str | None    # the tcmalloc library found on this machine, if any
    note: str | None = None  # one line for the log when tcmalloc was wanted but is not active

    def record(self) -> dict[str, str | None]:
        """The fields run.json and benchmark metadata store."""
        return {"allocator": self.active, "allocator_library": self.library,
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def wanted(environ: dict[str, str] | None = None) -> str:
    """The allocator ``RLS3_ALLOCATOR`` asks for (default tcmalloc); unknown values are an error."""
    env = os.environ if environ is None else environ
    value = env.get(ENV_VAR, "tcmalloc").strip().lower() or "tcmalloc"
    if value in ("off", "glibc", "none"):
        value = "system"
    if value not in CHOICES:
        raise AllocatorError(f"{ENV_VAR}={env[ENV_VAR]!r} is not an allocator rls3 knows; "
                             f"allowed: {', '.join(CHOICES)} ('system' keeps glibc malloc)")
    return value


def find_tcmalloc() -> str | None:
    """Path of the tcmalloc shared library (``RLS3_TCMALLOC`` if set), or None."""
    if os.environ.get(LIB_VAR):
        p = Path(os.environ[LIB_VAR]).expanduser()
        return str(p.resolve()) if p.is_file() else None
    dirs = list(_LIB_DIRS)
    multiarch = sysconfig.get_config_var("MULTIARCH")
    if multiarch:
        dirs.insert(0, f"/usr/lib/{multiarch}")
    for d in dirs:
        for name in _LIBRARIES:
            p = Path(d) / name
            if p.is_file():
                return str(p)
    return None


def active_allocator() -> str:
    """The allocator this process runs with ("tcmalloc" if the library is mapped, else "glibc")."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "glibc"
    return "tcmalloc" if "libtcmalloc" in maps else "glibc"


def _mapped(library: str) -> bool:
    """Whether `library` (its real path) is loaded into this process."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    return os.path.realpath(library) in maps


def status() -> AllocatorStatus:
    """The allocator in use and why, without changing anything."""
    want, lib, now = wanted(), find_tcmalloc(), active_allocator()
    note = None
    if want == "tcmalloc" and now != "tcmalloc":
        if lib is None:
            where = f" at {os.environ[LIB_VAR]}" if os.environ.get(LIB_VAR) else ""
            note = (f"tcmalloc not found{where}, running with glibc malloc: VLM fine-tuning and "
                    f"evaluation run ~2x slower ({INSTALL_HINT}; {ENV_VAR}=system silences "
                    f"this)")
        elif _mapped(lib):
            note = (f"{lib} is preloaded but is not tcmalloc ({LIB_VAR} must name a libtcmalloc "
                    f"library): VLM fine-tuning and evaluation may run ~2x slower")
        else:
            note = (f"{lib} could not be preloaded, running with glibc malloc: VLM fine-tuning "
                    f"and evaluation run ~2x slower")
    return AllocatorStatus(active=now, wanted=want, library=lib, note=note)


def _preload_without_tcmalloc(value: str) -> str:
    return ":".join(x for x in value.replace(" ", ":").split(":") if x and "libtcmalloc" not in x)


def _new_preload(st: AllocatorStatus, preload: str) -> str | None:
    """The ``LD_PRELOAD`` a re-executed process needs, or None when this one is already right."""
    if st.wanted == "tcmalloc":
        # a library already in LD_PRELOAD but not mapped was refused by the loader: do not loop
        if st.active == "tcmalloc" or st.library is None or st.library in preload:
            return None
        return ":".join(x for x in (st.library, preload) if x)
    if st.active != "tcmalloc" or "libtcmalloc" not in preload:
        return None
    return _preload_without_tcmalloc(preload)


def set_env_defaults() -> None:
    """Put `ENV_DEFAULTS` into this process's environment (values already set are kept)."""
    for k, v in ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)


def needs_reexec() -> bool:
    """Whether `ensure` would re-execute this process."""
    return _new_preload(status(), os.environ.get("LD_PRELOAD", "")) is not None


def ensure(argv: Sequence[str] | None = None) -> AllocatorStatus:
    """Set `ENV_DEFAULTS` and re-execute this process once so that it runs under the allocator
    ``RLS3_ALLOCATOR`` asks for.

    Call it first thing in an entry point, before torch is imported and before threads or files
    exist: `os.execve` replaces the process (same pid, same open descriptors) and runs the same
    command line (``sys.orig_argv``) again, with tcmalloc added to ``LD_PRELOAD`` (wanted, present,
    not loaded) or removed from it (``system`` asked for while an inherited preload loaded it).
    Returns only when no re-execution is needed or possible.
    """
    set_env_defaults()
    st = status()
    new_preload = _new_preload(st, os.environ.get("LD_PRELOAD", ""))
    args = list(argv) if argv is not None else list(getattr(sys, "orig_argv", []) or [])
    if new_preload is None or not args:
        return st
    env = dict(os.environ)
    if new_preload:
        env["LD_PRELOAD"] = new_preload
    else:
        env.pop("LD_PRELOAD", None)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *args[1:]], env)
    raise AssertionError("unreachable")  # pragma: no cover


def launched_world_size() -> int:
    """Number of processes the launcher started (`WORLD_SIZE`, set by torchrun and by
    `accelerate launch`); 1 when not launched that way."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"WORLD_SIZE={raw!r} is not an integer") from None
    if n < 1:
        raise ValueError(f"WORLD_SIZE={raw!r} must be >= 1")
    return n
