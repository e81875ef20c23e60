"""Child processes that die with their parent: llama.cpp pool workers and the llama.cpp server.

A parent killed with SIGKILL (or SIGTERM without a handler) runs no cleanup, so its spawn workers
(~380 MB each) and a server child would live on. Each child calls `bind_to_parent` right after it
starts:

- Linux: `prctl(PR_SET_PDEATHSIG, SIGKILL)`, immediate. It fires when the parent *thread* that
  created the child exits, not the process, so it is armed only when the caller says the child was
  started from the parent's main thread (`started_from_main_thread()` in the parent);
- everywhere: a daemon watchdog thread that exits the process as soon as its parent pid changes
  (the child was re-parented: the parent is gone). It runs while llama.cpp computes, because
  ctypes releases the GIL during the call.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time

PARENT_PID_ENV = "RECGPT_PARENT_PID"
PDEATHSIG_ENV = "RECGPT_PDEATHSIG"
_PR_SET_PDEATHSIG = 1
_WATCH_INTERVAL_S = 0.25


def started_from_main_thread() -> bool:
    """Whether the calling thread is the main thread (whose exit is the process's exit)."""
    return threading.current_thread() is threading.main_thread()


def set_pdeathsig(sig: int = signal.SIGKILL) -> bool:
    """Ask Linux to send `sig` to this process when its parent thread dies; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _orphaned() -> None:
    # os._exit: no cleanup handler may block (a half-written answer is worth nothing without the parent).
    os._exit(1)


def _watch(parent_pid: int, interval_s: float) -> None:
    while True:
        if os.getppid() != parent_pid:
            _orphaned()
        time.sleep(interval_s)


def bind_to_parent(parent_pid: int, *, pdeathsig: bool, interval_s: float = _WATCH_INTERVAL_S) -> None:
    """Make this process exit when `parent_pid` is gone (see the module docstring); call it first thing."""
    if pdeathsig:
        set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before we could ask to be told
        _orphaned()
    threading.Thread(
        target=_watch, args=(parent_pid, interval_s), name="recgpt-lifeline", daemon=True
    ).start()


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a child started from this thread: names this process as the parent to bind to."""
    out = dict(os.environ if env is None else env)
    out[PARENT_PID_ENV] = str(os.getpid())
    out[PDEATHSIG_ENV] = "1" if started_from_main_thread() else "0"
    return out


def bind_from_env() -> None:
    """`bind_to_parent` with what `child_env` put in the environment (no-op when it is absent)."""
    raw = os.environ.pop(PARENT_PID_ENV, "")
    pdeathsig = os.environ.pop(PDEATHSIG_ENV, "0") == "1"
    with contextlib.suppress(ValueError):
        if raw:
            bind_to_parent(int(raw), pdeathsig=pdeathsig)


__all__ = ["bind_from_env", "bind_to_parent", "child_env", "set_pdeathsig", "started_from_main_thread"]
