"""``Stream.makefile()`` for a stream whose bytes are not the socket's (TLS): a file over the stream's own methods."""

from __future__ import annotations

import io
from typing import Any, Protocol


class Readable(Protocol):
    """What a file over a stream needs of it."""

    def recv(self, bufsize: int = ...) -> bytes: ...

    def sendall(self, data: bytes | bytearray | memoryview | str) -> None: ...

    def fileno(self) -> int: ...


class StreamIO(io.RawIOBase):
    """The raw file under :meth:`Stream.makefile` for a TLS stream: plaintext in and out."""

    def __init__(self, stream: Readable, mode: str) -> None:
        super().__init__()
        self._stream = stream
        self._mode = mode

    def readable(self) -> bool:
        return "r" in self._mode

    def writable(self) -> bool:
        return "w" in self._mode

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._stream.recv(len(view))
        view[: len(data)] = data
        return len(data)

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._stream.sendall(view)
        return len(view)

    def fileno(self) -> int:
        return self._stream.fileno()


def stream_file(
    stream: Readable,
    mode: str = "rb",
    buffering: int | None = None,
    *,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
) -> Any:
    """``socket.makefile`` semantics over a :class:`Stream` (closing the file leaves the stream open)."""
    if not set(mode) <= {"r", "w", "b"}:
        raise ValueError(f"invalid mode {mode!r} (only r, w, b allowed)")
    writing = "w" in mode
    reading = "r" in mode or not writing
    raw = StreamIO(stream, ("r" if reading else "") + ("w" if writing else ""))
    size = io.DEFAULT_BUFFER_SIZE if buffering is None or buffering < 0 else buffering
    if size == 0:
        if "b" not in mode:
            raise ValueError("unbuffered streams must be binary")
        return raw
    buffer: io.BufferedIOBase
    if reading and writing:
        buffer = io.BufferedRWPair(raw, raw, size)
    elif reading:
        buffer = io.BufferedReader(raw, size)
    else:
        buffer = io.BufferedWriter(raw, size)
    if "b" in mode:
        return buffer
    return io.TextIOWrapper(buffer, io.text_encoding(encoding), errors, newline)
