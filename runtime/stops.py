"""Clean stops: a scheduler's signal ends a run at once, and workers never outlive their parent.

- ``stop_on_signals()`` (the CLI's run) turns SIGTERM, SIGINT and SIGHUP into ``Stopped`` in the
  main thread: the stack unwinds through the writer (its temporary file is removed) and the
  process pool (its workers are killed), and the caller exits with ``128 + signal``: 143, 130,
  129. Only the first signal stops; later ones are ignored while the run cleans up. A handler's
  exception can be lost (when the signal lands in a finalizer, Python reports and drops it):
  ``check()``, called after every batch and before publication, raises the stop again.
- Once the output is in place (``disarm()``, called by the publication), a signal no longer
  undoes the run: it finishes and reports success.
- ``worker_setup(parent)`` runs first in every worker: the worker leaves SIGINT to its parent and
  asks the kernel to kill it when the parent dies, even by ``kill -9`` (Linux
  ``PR_SET_PDEATHSIG``; elsewhere a thread that watches the parent).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from types import FrameType

#: The signals a run stops on, and the exit code of each (128 + the signal's number).
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
EXIT_CODES: dict[str, int] = {s.name: 128 + int(s) for s in STOP_SIGNALS}

_PR_SET_PDEATHSIG = 1
_armed = False
_holding = False
_requested: int | None = None


class Stopped(BaseException):
    """A run stopped by a signal. Like KeyboardInterrupt it is no ``Exception``: only clean-up
    code (``finally``, context managers) sees it on its way out."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"stopped by {self.name}")

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _requested
    if not _armed or _requested is not None:
        return  # no run to stop, or already stopping
    _requested = signum
    if not _holding:
        raise Stopped(signum)


def check() -> None:
    """Raise ``Stopped`` if a stop was asked for and the run still goes on (the handler's own
    exception was lost, or held back)."""
    if _armed and _requested is not None and not _holding:
        raise Stopped(_requested)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, the first SIGTERM, SIGINT or SIGHUP raises ``Stopped`` in the main
    thread. Outside the main thread (signals cannot be handled there) this does nothing."""
    global _armed, _requested
    if not _in_main_thread():
        yield
        return
    previous = {s: signal.signal(s, _on_signal) for s in STOP_SIGNALS}
    _armed, _requested = True, None
    try:
        yield
    finally:
        _armed, _requested = False, None
        for s, handler in previous.items():
            signal.signal(s, handler)


def disarm() -> None:
    """The run's result is in place: from now on a signal no longer stops it."""
    global _armed
    _armed = False


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Hold a stop back during a step that must not be cut in two (a rename and its
    bookkeeping): a signal that arrives meanwhile stops the run when the step is done, unless the
    step disarmed it. (Held in Python, not with a signal mask: the kernel would hand a masked
    signal to another thread, and Python runs every handler in the main thread anyway.)"""
    global _holding
    outer = _holding
    _holding = True
    try:
        yield
    finally:
        _holding = outer
    check()


def exit_within(code: int, seconds: float = 5.0) -> None:
    """A safety net for a stopped process: end it with ``code`` after ``seconds`` if it has not
    ended by itself (a library thread cut by the signal at a bad moment could otherwise keep the
    interpreter waiting at exit). A daemon thread: it never delays a normal exit."""

    def end() -> None:
        time.sleep(seconds)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)

    threading.Thread(target=end, name="gmcf-exit-within", daemon=True).start()


# -- workers --------------------------------------------------------------------------------------
def worker_setup(parent: int) -> None:
    """First thing in a worker process: default handling of SIGTERM and SIGHUP (a worker has
    nothing to clean up), SIGINT ignored (a terminal's Ctrl-C reaches the whole process group;
    the parent stops the pool), and death with the parent."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)


def die_with_parent(parent: int) -> None:
    """Have this process killed when ``parent`` (the process that started it) dies."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            ok = libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            ok = False
        if ok:
            if os.getppid() != parent:  # the parent died before the request took effect
                os._exit(1)
            return
    threading.Thread(
        target=_watch_parent, args=(parent,), name="gmcf-parent-watch", daemon=True
    ).start()


def _watch_parent(parent: int, every: float = 1.0) -> None:
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)


def end_pool(pool: ProcessPoolExecutor, wait: float = 10.0) -> None:
    """Kill a pool's workers now and release the pool, without waiting for queued batches (a
    stop or an error: their results are no longer wanted).

    A worker killed in the middle of a message leaves the pool's pipes half written: the pool's
    own threads would wait for the rest forever (and the interpreter for them at exit). Closing
    the parent's ends that only the dead workers used turns that wait into a broken pipe, which
    the pool handles."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for p in processes:
        with contextlib.suppress(Exception):
            p.kill()
    for p in processes:
        with contextlib.suppress(Exception):
            p.join(timeout=5)
    for queue, end in (
        (getattr(pool, "_call_queue", None), "_reader"),
        (getattr(pool, "_result_queue", None), "_writer"),
    ):
        with contextlib.suppress(Exception):
            getattr(queue, end).close()
    with contextlib.suppress(Exception):
        pool.shutdown(wait=False, cancel_futures=True)
    manager = getattr(pool, "_executor_manager_thread", None)
    if isinstance(manager, threading.Thread):
        manager.join(timeout=wait)
