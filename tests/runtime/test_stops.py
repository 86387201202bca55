"""Signals and parent death (runtime/stops.py), below the CLI's subprocess tests.

- Inside ``stop_on_signals`` the first SIGTERM, SIGINT or SIGHUP raises ``Stopped`` (exit code
  128 + the signal); later ones are ignored while the run cleans up; the handlers are restored
  afterwards.
- After ``disarm`` (the output is in place) a signal no longer stops the run; ``held`` delays a
  signal to the end of a step that must not be cut in two.
- A worker dies with its parent: by the kernel's parent-death signal on Linux, else by a thread
  that watches the parent (both tested here).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gmcf.runtime import stops


def _signal_self(sig: signal.Signals) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.05)  # the handler runs in the main thread at the next instruction


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)]
)
def test_the_first_signal_stops_later_ones_are_ignored(sig: signal.Signals, code: int) -> None:
    before = signal.getsignal(sig)
    with stops.stop_on_signals():
        with pytest.raises(stops.Stopped) as info:
            _signal_self(sig)
        assert info.value.exit_code == code and str(info.value) == f"stopped by {sig.name}"
        _signal_self(sig)  # while cleaning up: ignored
    assert signal.getsignal(sig) is before


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_stop_lost_in_a_finalizer_is_raised_at_the_next_check() -> None:
    """A signal handled while a finalizer runs: Python reports the handler's exception and drops
    it, and the run would go on. The run's next check raises it again."""

    class Finalized:
        def __del__(self) -> None:
            _signal_self(signal.SIGHUP)

    with stops.stop_on_signals():
        obj = Finalized()
        del obj  # the stop is raised inside __del__, and lost there
        with pytest.raises(stops.Stopped) as info:
            stops.check()
        assert info.value.exit_code == 129


def test_once_the_output_is_in_place_a_signal_no_longer_stops() -> None:
    with stops.stop_on_signals():
        stops.disarm()
        _signal_self(signal.SIGTERM)
        stops.check()


def test_a_held_signal_arrives_when_the_step_is_done() -> None:
    reached = []
    with stops.stop_on_signals(), pytest.raises(stops.Stopped):
        with stops.held():
            _signal_self(signal.SIGTERM)
            reached.append("end of the step")
        time.sleep(0.05)
    assert reached == ["end of the step"]


CHILD = textwrap.dedent(
    """
    import os, sys, time
    from gmcf.runtime import stops
    if {fallback}:
        stops.sys.platform = "elsewhere"  # no prctl: the watching thread
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        stops._watch_parent.__defaults__ = (0.05,)
        stops.die_with_parent(parent)
        time.sleep(60)
        os._exit(0)
    print(pid, flush=True)
    os._exit(0)  # the parent dies at once, as with kill -9: no clean-up runs
    """
)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("fallback", [False, True], ids=["PR_SET_PDEATHSIG", "watching thread"])
def test_a_worker_dies_with_its_parent(fallback: bool) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD.format(fallback=fallback)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    child = int(done.stdout)
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def test_a_stopped_process_ends_even_if_a_thread_hangs() -> None:
    """The interpreter waits for non-daemon threads at exit; after a stop it must not wait long."""
    script = textwrap.dedent(
        """
        import threading
        from gmcf.runtime import stops
        threading.Thread(target=threading.Event().wait).start()  # never ends
        stops.exit_within(143, 0.2)
        print("stopping", flush=True)
        """
    )
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 143 and done.stdout == "stopping\n", done
    assert time.monotonic() - t0 < 10
