"""Run by tests/test_vlm_distributed.py as 2 processes: both join the process group and answer
one all-gather, then process 1 stops itself (SIGSTOP) and process 0 tries another all-gather.
Waits for the file argv[1] before joining, so both join within the (short) timeout."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from rls3.vlm.distributed import CollectiveTimeoutError, init_data_parallel

if __name__ == "__main__":
    go = Path(sys.argv[1])
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.02)
    group = init_data_parallel()
    assert group is not None and group.world_size == 2
    assert group.gather_objects(group.rank) == [0, 1]
    if group.rank == 1:
        os.kill(os.getpid(), signal.SIGSTOP)
    t = time.monotonic()
    try:
        group.gather_objects("again")
    except CollectiveTimeoutError as e:
        print(f"named after {time.monotonic() - t:.1f}s: {e}", flush=True)
        # leave without interpreter teardown: destroying a process group whose peer is stopped
        # can abort in C++ ("terminate called without an active exception") after the message
        os._exit(3)
    sys.exit(0)
