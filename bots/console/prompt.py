"""The console's keyboard: lines read on the event loop, and Ctrl-C.

Lines are read from stdin with ``loop.add_reader``, not with ``input()`` in a
worker thread. A thread blocked in ``input()`` cannot be interrupted, and
``asyncio.run`` waits for its executor's threads on the way out, so Ctrl-C at an
idle prompt used to wait for Enter. Read on the loop, an interrupt simply fails
the pending read, and nothing is left behind holding the terminal. The terminal
stays in its ordinary line mode, so editing a line (backspace, Ctrl-U, Ctrl-W) is
the terminal's own, as it was with ``input()`` (Parley never loaded ``readline``).
``add_reader`` needs a selector event loop on a POSIX system.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import signal
from collections.abc import Callable, Iterator


class LineReader:
    """Lines typed on file descriptor ``fd``, one ``await readline()`` at a time."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._eof = False
        self._waiter: asyncio.Future[None] | None = None
        self._interrupted = False

    async def readline(self) -> str:
        """The next line, without its newline. Raises EOFError at the end of input (Ctrl-D)
        and KeyboardInterrupt when :meth:`interrupt` is called."""
        loop = asyncio.get_running_loop()
        while "\n" not in self._buffer and not self._eof:
            if self._interrupted:
                break
            self._waiter = loop.create_future()
            loop.add_reader(self.fd, self._readable)
            try:
                await self._waiter
            finally:
                loop.remove_reader(self.fd)
                self._waiter = None
        if self._interrupted:
            self._interrupted = False
            self._buffer = ""  # like the terminal, Ctrl-C drops the line being typed
            raise KeyboardInterrupt
        if "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            return line.removesuffix("\r")
        if self._buffer:  # the last line had no newline
            line, self._buffer = self._buffer, ""
            return line
        raise EOFError

    def interrupt(self) -> None:
        """Ctrl-C: the pending (or the next) :meth:`readline` raises KeyboardInterrupt."""
        self._interrupted = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._buffer += self._decoder.decode(data)
        else:
            self._buffer += self._decoder.decode(b"", final=True)
            self._eof = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


@contextlib.contextmanager
def on_ctrl_c(callback: Callable[[], None]) -> Iterator[None]:
    """Call ``callback`` on the event loop for every Ctrl-C (SIGINT) inside the block;
    the handler that was there before comes back afterwards. Outside the main thread,
    where a loop cannot take signals, Ctrl-C keeps its ordinary meaning."""
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGINT)
    try:
        loop.add_signal_handler(signal.SIGINT, callback)
    except (NotImplementedError, RuntimeError, ValueError):
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
