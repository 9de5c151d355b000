"""Process lifetimes: workers that die with their parent, SIGTERM treated as Ctrl-C, and
children started with Ctrl-C held off until they can ignore it."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType, ModuleType

PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_POLL_SECONDS = 1.0


def die_with_parent(parent_pid: int) -> None:
    """End this process when ``parent_pid`` (its parent) dies, however it dies.

    On Linux the kernel sends SIGKILL at the parent's death (prctl PR_SET_PDEATHSIG);
    elsewhere a daemon thread polls the parent pid. A parent that is already gone ends this
    process now.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent_pid:  # the parent died before the request took hold
                os._exit(1)
            return

    def watch() -> None:
        while os.getppid() == parent_pid:
            threading.Event().wait(PARENT_POLL_SECONDS)
        os._exit(1)

    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=watch, name="normlab-parent-watch", daemon=True).start()


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived; handled as Ctrl-C is (a KeyboardInterrupt)."""


def is_interrupt(error: BaseException) -> bool:
    """Whether ``error`` is a Ctrl-C or SIGTERM, or was raised by one.

    Python wraps what a class body's ``__set_name__`` raises in a RuntimeError (3.11), so an
    interrupt that lands while a module such as matplotlib is imported arrives as that.
    """
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, KeyboardInterrupt):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM raises ``Terminated`` (a KeyboardInterrupt) in the main thread,
    so what `timeout`, `kill` and container stops send ends the work as Ctrl-C does. Outside
    the main thread this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum: int, frame: FrameType | None) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def ctrl_c_blocked() -> Iterator[None]:
    """Block SIGINT in this thread inside the block. A process started here inherits the
    blocked signal, so a Ctrl-C that reaches the whole process group cannot interrupt its
    start-up (it will ignore SIGINT once running); this process receives a Ctrl-C that came
    meanwhile when the block ends."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def starting_worker() -> Iterator[None]:
    """Around the start of a spawned worker process: Ctrl-C blocked (see
    :func:`ctrl_c_blocked`), and this process's main script hidden, so that the worker does
    not run it again. multiprocessing's spawn runs the parent's main script in each child;
    a worker needs nothing from it (a model defined there reaches it by value, see
    normlab.models.registry), and a script without an ``if __name__ == "__main__":`` guard
    would start its whole sweep again in every worker."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = ModuleType("__main__")
    try:
        with ctrl_c_blocked():
            yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main
