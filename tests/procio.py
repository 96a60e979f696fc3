"""Reading a child's output without waiting for ever.

A bare readline() on a child's pipe blocks until the child (or any process
that inherited the pipe, such as a hook it started) writes or exits; one
missed line and the test hangs the suite. These helpers fail the test instead.
"""
from __future__ import annotations

import queue
import threading
from typing import IO, AnyStr


def readline_within(stream: IO[AnyStr], timeout_s: float, what: str) -> AnyStr:
    """One line of stream, or AssertionError after timeout_s."""
    got: queue.Queue = queue.Queue(maxsize=1)
    # A reader thread, not select(): a text stream may hold a line in its own
    # buffer that the descriptor no longer shows as readable.
    threading.Thread(target=lambda: got.put(stream.readline()), daemon=True,
                     name=f"readline {what}").start()
    try:
        return got.get(timeout=timeout_s)
    except queue.Empty:
        raise AssertionError(f"no line from {what} within {timeout_s} s") from None
