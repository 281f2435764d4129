"""WebSocket (RFC 6455) as a byte stream, with no I/O: the handshake and the frames of one connection.

Frames, the HTTP handshake and permessage-deflate (RFC 7692) are the sans-I/O layer of the ``websockets``
package (its masking is in C). What is sockcat's own is the stream semantics (docs/websocket.md):
- the payloads of data messages, binary or text, are the stream's bytes;
- a Close frame is the end of the sender's direction, like a TCP FIN: after sending its Close a side still
  receives until the peer's Close, and a side that has received a Close may still send until it ends its
  own direction (RFC 6455 §5.5.1 lets it finish what it is sending first);
- pings are answered with pongs; every message is bounded by ``max_message``; in text mode each message must
  be UTF-8.
The caller moves bytes: :meth:`WsCore.feed` what the wire gave, and writes what :meth:`WsCore.take_out` and the
``encode_*`` methods return.
"""

from __future__ import annotations

import codecs
import os
import re
import struct
import zlib
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake, InvalidStatus, PayloadTooBig, ProtocolError
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import (
    enable_client_permessage_deflate,
    enable_server_permessage_deflate,
)
from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.speedups import apply_mask
from websockets.streams import StreamReader
from websockets.typing import Origin, Subprotocol
from websockets.uri import WebSocketURI

from sockcat.core.untrusted import escape
from sockcat.core.wsoptions import DEFAULT_MAX_MESSAGE, WsOptions

MAX_SEND = 256 * 1024  # bytes in one message sockcat sends from a stream (peers bound messages: websockets at 1 MiB)
_PROBE = 4096  # bytes of a large message test-compressed to decide whether to compress it
_CLEAN_CLOSE = frozenset({1000, 1001, 1005})  # normal, going away, no status: a plain end of the stream
MAX_HANDSHAKE = 64 * 1024  # bytes of HTTP request or response head (websockets also bounds lines and headers)


class WsError(Exception):
    """The peer broke the protocol; ``code`` is the Close status to send, ``reason`` a one-line why."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class WsCore:
    """One open WebSocket connection's frames. Not thread-safe: a reader calls :meth:`feed` and :meth:`read`, a
    writer the ``encode_*`` methods; the sync channel (``streams/wsio.py``) keeps them apart with a lock."""

    client: bool
    extensions: Sequence[Extension] = ()
    text: bool = False
    max_message: int = DEFAULT_MAX_MESSAGE
    leftover: bytes = b""
    inbox: bytearray = field(default_factory=bytearray)
    peer_closed: bool = False  # the peer's Close arrived (or its TCP end, after a whole frame)
    close_sent: bool = False
    close_code: int | None = None  # what the peer's Close said
    close_reason: str = ""
    out: bytearray = field(default_factory=bytearray)  # control frames to send: pongs, a Close after an error
    messages: int = 0  # data messages received whole
    pongs: int = 0

    def __post_init__(self) -> None:
        self._boundary = True  # the parser waits for the start of a frame
        self._skip = 0  # data messages still to send uncompressed (see _message)
        self._backoff = 16
        self._partial = bytearray()  # text mode: the start of a line not yet sent
        self._reader = StreamReader()
        self._size = 0  # bytes so far in the message being received
        self._in_message: Opcode | None = None
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._parser = self._frames()
        next(self._parser)
        if self.leftover:
            self.feed(self.leftover)
            self.leftover = b""

    # --- receiving ---------------------------------------------------------------------------------
    def feed(self, data: bytes | bytearray) -> None:
        """Bytes from the wire; ``b""`` is the transport's end. Raises :class:`WsError` on a protocol error
        (and queues the Close to send in ``out``)."""
        if self.peer_closed:
            return  # after a Close, nothing more is read (RFC 6455 §1.4)
        if (
            data
            and self._boundary
            and self._in_message is None
            and not self._reader.buffer
            and not self.extensions
            and not self.text
        ):
            taken = self._whole_frames(data)
            if taken == len(data):
                return
            data = data[taken:]
        if data:
            self._reader.feed_data(data)
        else:
            self._reader.feed_eof()
        try:
            next(self._parser)
        except StopIteration:
            pass
        except EOFError:
            if self._reader.buffer or self._in_message is not None:
                raise self._fail(CloseCode.PROTOCOL_ERROR, "connection ended in the middle of a message") from None
            self.peer_closed = True  # a TCP end without a Close: an end all the same
        except PayloadTooBig:
            raise self._fail(CloseCode.MESSAGE_TOO_BIG, f"message over {self.max_message} bytes") from None
        except ProtocolError as exc:
            raise self._fail(CloseCode.PROTOCOL_ERROR, f"bad WebSocket frame: {exc}") from None
        except UnicodeDecodeError:
            raise self._fail(CloseCode.INVALID_DATA, "a Close reason is not UTF-8") from None

    def read(self, n: int) -> bytes | None:
        """Up to ``n`` received bytes; ``b""`` once the peer's direction has ended; None: feed me more.
        A Close with an error status (not 1000, 1001 or none) raises :class:`WsError` once the bytes before it
        are read."""
        if self.inbox:
            data = bytes(self.inbox[:n])
            del self.inbox[:n]
            return data
        if not self.peer_closed:
            return None
        if self.close_code is not None and self.close_code not in _CLEAN_CLOSE:
            code, self.close_code = self.close_code, None  # reported once; later reads see the end
            reason = f": {escape(self.close_reason[:120])}" if self.close_reason else ""
            raise WsError(code, f"the peer closed the WebSocket with status {code}{reason}")
        return b""

    def _whole_frames(self, data: bytes | bytearray) -> int:
        """The common case at C speed: whole, small, unfragmented data frames at the start of ``data`` (the parser
        being between frames, with no extension, not in text mode). Their payloads go to the inbox; the count of
        bytes taken is returned, and the rest (anything else at all) goes through ``websockets``' parser."""
        pos, end, masked = 0, len(data), not self.client
        head = 6 if masked else 2
        while end - pos >= head:
            b0, b1 = data[pos], data[pos + 1]
            length = b1 & 0x7F
            if (b0 != 0x82 and b0 != 0x81) or (b1 >= 0x80) != masked or length >= 126:
                break
            stop = pos + head + length
            if stop > end or self._size + length > self.max_message:
                break
            if masked:
                self.inbox += apply_mask(data[pos + 6 : stop], data[pos + 2 : pos + 6])
            else:
                self.inbox += data[pos + 2 : stop]
            self.messages += 1
            pos = stop
        return pos

    def _read_exact(self, n: int) -> Generator[None, None, bytes | bytearray]:
        data = yield from self._reader.read_exact(n)
        self._boundary = False  # a frame has begun: the fast path waits for its end
        return data

    def _frames(self) -> Generator[None, None, None]:
        yield
        while True:
            self._boundary = True
            frame = yield from Frame.parse(
                self._read_exact,
                mask=not self.client,
                max_size=max(self.max_message - self._size, 125),
                extensions=list(self.extensions),
            )
            op = frame.opcode
            if op is Opcode.TEXT or op is Opcode.BINARY or op is Opcode.CONT:
                self._data(frame)
            elif op is Opcode.PING:
                self.out += Frame(Opcode.PONG, frame.data).serialize(mask=self.client)
            elif op is Opcode.PONG:
                self.pongs += 1
            elif op is Opcode.CLOSE:
                close = Close.parse(frame.data)
                if self._in_message is not None:
                    raise ProtocolError("Close in the middle of a message")
                self.close_code, self.close_reason = close.code, close.reason
                self.peer_closed = True
                return

    def _data(self, frame: Frame) -> None:
        if frame.opcode is Opcode.CONT:
            if self._in_message is None:
                raise ProtocolError("continuation frame with no message")
        elif self._in_message is not None:
            raise ProtocolError("new message before the last one ended")
        else:
            self._in_message = frame.opcode
            self._size = 0
        self._size += len(frame.data)
        if self._size > self.max_message:
            raise PayloadTooBig(self._size, self.max_message)
        if self._in_message is Opcode.TEXT and self.text:
            try:
                self._utf8.decode(frame.data, final=frame.fin)
            except UnicodeDecodeError:
                raise self._fail(CloseCode.INVALID_DATA, "a text message is not UTF-8") from None
        self.inbox += frame.data
        if frame.fin:
            self._in_message = None
            self._size = 0
            self.messages += 1
            if self.text and not self.inbox.endswith(b"\n"):
                self.inbox += b"\n"  # text mode: each message is one line

    def _fail(self, code: int, reason: str) -> WsError:
        if not self.close_sent:
            self.out += self.encode_close(code, reason[:120])
        self.peer_closed = True
        return WsError(code, reason)

    def take_out(self) -> bytes:
        """Control frames waiting to be written (pongs, an error's Close)."""
        data = bytes(self.out)
        self.out.clear()
        return data

    # --- sending -----------------------------------------------------------------------------------
    def encode(self, data: bytes | bytearray | memoryview) -> bytes:
        """Stream bytes as messages: binary messages of at most ``MAX_SEND`` bytes; in text mode, one text
        message per line (without its newline; a last partial line waits for the rest, or for the Close)."""
        if self.close_sent:
            raise WsError(CloseCode.NORMAL_CLOSURE, "cannot send after this side's Close")
        view = memoryview(data).cast("B")
        if self.text:
            self._partial += view
            *lines, rest = self._partial.split(b"\n")
            self._partial = bytearray(rest)
            return b"".join(self.encode_text(line) for line in lines)
        if len(view) <= MAX_SEND:
            return self._message(Opcode.BINARY, bytes(view))
        return b"".join(
            self._message(Opcode.BINARY, bytes(view[i : i + MAX_SEND])) for i in range(0, len(view), MAX_SEND)
        )

    def encode_text(self, text: bytes | bytearray) -> bytes:
        """One text message; text that is not UTF-8 raises :class:`WsError` (nothing is sent)."""
        try:
            bytes(text).decode()
        except UnicodeDecodeError:
            raise WsError(CloseCode.INVALID_DATA, "text mode sends UTF-8 only: a line is not UTF-8") from None
        return self._message(Opcode.TEXT, bytes(text))

    def encode_ping(self, data: bytes = b"") -> bytes:
        return self._serialize(Frame(Opcode.PING, data))

    def encode_close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> bytes:
        """This side's Close (once; later calls give ``b""``): the end of this direction."""
        if self.close_sent:
            return b""
        last = b""
        if self._partial and code == CloseCode.NORMAL_CLOSURE:
            last, self._partial = self.encode_text(self._partial), bytearray()  # text mode: a last line without \n
        self.close_sent = True
        return last + self._serialize(Frame(Opcode.CLOSE, Close(code, reason).serialize()))

    def _plain(self, op: Opcode, payload: bytes) -> bytes:
        """A whole data frame without extensions: what ``Frame.serialize`` makes, without its generality."""
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | op, n | (0x80 if self.client else 0)))
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | op, 126 | (0x80 if self.client else 0), n)
        else:
            head = struct.pack("!BBQ", 0x80 | op, 127 | (0x80 if self.client else 0), n)
        if not self.client:
            return head + payload
        key = os.urandom(4)
        return head + key + apply_mask(payload, key)

    def _message(self, op: Opcode, payload: bytes) -> bytes:
        """A whole data message. With compression negotiated, a large payload that does not compress (a probe of
        its first 4 KiB shrinks by less than 10 %) goes out uncompressed, as RFC 7692 allows per message, and so do
        the next ones for a while (16 messages, doubling while it lasts, up to 4,096): deflating random bytes runs at
        about 20 MiB/s, a hundredth of the speed of the rest of the path."""
        if not self.extensions:
            return self._plain(op, payload)
        if len(payload) < _PROBE:
            return self._serialize(Frame(op, payload))
        if self._skip:
            self._skip -= 1
            return self._plain(op, payload)
        if len(zlib.compress(payload[:_PROBE], 1)) > 0.9 * _PROBE:
            self._skip, self._backoff = self._backoff, min(self._backoff * 2, 4096)
            return self._plain(op, payload)
        self._backoff = 16
        return self._serialize(Frame(op, payload))

    def _serialize(self, frame: Frame) -> bytes:
        return frame.serialize(mask=self.client, extensions=list(self.extensions))

    @property
    def finished(self) -> bool:
        """Both Closes have passed: the transport may end."""
        return self.peer_closed and self.close_sent


# --- the opening handshake ---------------------------------------------------------------------------


@dataclass
class Keepalive:
    """``--ping``'s rule, for the sync and the asyncio channel alike (each brings its own clock and timer): every
    ``every`` seconds a ping goes out, none after this side's Close; a peer heard from in neither of the last two
    periods has gone silent, and the connection ends as an error."""

    every: float
    heard: float  # when the peer was last heard from (its bytes arrived)
    silent: float = 0.0  # set once the peer has gone silent: for how long

    def tick(self, core: WsCore, now: float) -> bytes | None:
        """Called each period: the ping frame to send (``b""``: none is due), or None: the peer went silent."""
        if now - self.heard > 2 * self.every:
            self.silent = 2 * self.every
            return None
        if core.close_sent:
            return b""  # nothing more goes out after our Close, but the silence is still watched
        return core.encode_ping(b"sockcat")

    def silence(self) -> str:
        return f"nothing heard for {self.silent:g} s (--ping)"


class HandshakeReader:
    """Reads an HTTP request (server side) or response (client side) head from the wire, bounded."""

    def __init__(self, *, response: bool) -> None:
        self.reader = StreamReader()
        self.result: Request | Response | None = None
        gen: Generator[None, None, Request | Response]
        r = self.reader
        gen = Response.parse(r.read_line, r.read_exact, r.read_to_eof) if response else Request.parse(r.read_line)
        self._gen = gen
        self._total = 0

    def feed(self, data: bytes) -> Request | Response | None:
        """Feed bytes (``b""``: the peer's end); the parsed head once complete, else None.
        Raises :class:`WsError` (code 1002) on a malformed or oversized head."""
        self._total += len(data)
        if data:
            self.reader.feed_data(data)
        else:
            self.reader.feed_eof()
        try:
            next(self._gen)
        except StopIteration as stop:
            self.result = stop.value
            return self.result
        except EOFError:
            raise WsError(CloseCode.PROTOCOL_ERROR, "connection closed during the WebSocket handshake") from None
        except (InvalidHandshake, ValueError, RuntimeError) as exc:
            raise WsError(CloseCode.PROTOCOL_ERROR, f"bad HTTP in the WebSocket handshake: {exc}") from None
        if self._total > MAX_HANDSHAKE:
            raise WsError(CloseCode.PROTOCOL_ERROR, f"WebSocket handshake over {MAX_HANDSHAKE} bytes")
        return None

    def leftover(self) -> bytes:
        """Bytes read past the head (the first frames, sent at once by an eager peer)."""
        data = bytes(self.reader.buffer)
        self.reader.buffer.clear()
        return data


class ClientHandshake:
    """The client's opening handshake: :attr:`request` to send, then :meth:`feed` the answer."""

    def __init__(self, host: str, port: int, resource: str, opts: WsOptions, *, secure: bool) -> None:
        path, _, query = resource.partition("?")
        uri = WebSocketURI(secure, host or "localhost", port or (443 if secure else 80), path, query)
        self.opts = opts
        self.proto = ClientProtocol(
            uri,
            extensions=enable_client_permessage_deflate(None) if opts.compress else None,
            subprotocols=[Subprotocol(p) for p in opts.protocols] or None,
            max_size=opts.max_message,
        )
        req = self.proto.connect()
        for name, value in opts.headers:
            req.headers[name] = value
        self.request = req.serialize()
        self._reader = HandshakeReader(response=True)

    def feed(self, data: bytes) -> WsCore | None:
        """The server's answer, as it arrives; the open connection once it has all come. A refusal raises
        :class:`WsError` naming the HTTP status."""
        response = self._reader.feed(data)
        if response is None:
            return None
        assert isinstance(response, Response)
        try:
            self.proto.process_response(response)
        except InvalidStatus:
            reason = escape(response.reason_phrase[:80])
            raise WsError(CloseCode.PROTOCOL_ERROR, f"server answered HTTP {response.status_code} {reason}") from None
        except InvalidHandshake as exc:
            raise WsError(CloseCode.PROTOCOL_ERROR, f"bad WebSocket handshake answer: {exc}") from None
        return WsCore(
            client=True,
            extensions=self.proto.extensions,
            text=self.opts.text,
            max_message=self.opts.max_message,
            leftover=self._reader.leftover(),
        )

    @property
    def subprotocol(self) -> str | None:
        return self.proto.subprotocol


@dataclass
class ServerAnswer:
    """What a listener answers a request: ``response`` bytes to send, and ``core`` when the connection is open
    (None: the response was an HTTP error, and the connection ends after it)."""

    request: Request
    response: bytes
    core: WsCore | None
    status: int
    subprotocol: str | None = None


def answer(request: Request, resource: str, opts: WsOptions, leftover: bytes = b"") -> ServerAnswer:
    """A listener's answer to ``request``. A listener on a path other than ``/`` serves that path only (404
    elsewhere); a request that is not a WebSocket upgrade gets HTTP 426 (websockets' wording)."""
    origins: list[Origin | None] | None = None
    if opts.origins is not None:
        origins = [Origin(o) for o in opts.origins]
        origins.append(None)  # no Origin header: not a browser, so no cross-site hijacking to fear
    proto = ServerProtocol(
        origins=origins,
        extensions=enable_server_permessage_deflate(None) if opts.compress else None,
        subprotocols=[Subprotocol(p) for p in opts.protocols] or None,
        max_size=opts.max_message,
    )
    if resource not in ("", "/") and request.path.partition("?")[0] != resource.partition("?")[0]:
        response = proto.reject(404, "Not Found\n")
    else:
        response = proto.accept(request)
    core = None
    if response.status_code == 101:
        core = WsCore(
            client=False, extensions=proto.extensions, text=opts.text, max_message=opts.max_message, leftover=leftover
        )
    return ServerAnswer(request, response.serialize(), core, response.status_code, proto.subprotocol)


def environment(request: Request) -> dict[str, str]:
    """A child's view of the request, CGI style as websocketd gives it: ``SOCKCAT_WS_PATH`` and one
    ``HTTP_NAME`` per header (letters, digits and ``_`` only; repeated headers joined with ``, ``)."""
    env = {"SOCKCAT_WS_PATH": request.path}
    for name in {k.lower() for k in request.headers} - {"proxy"}:  # HTTP_PROXY would steer the child (httpoxy)
        key = "HTTP_" + re.sub(r"[^A-Z0-9]", "_", name.upper())
        value = ", ".join(request.headers.get_all(name))
        env[key] = value.replace("\0", "")
    return env
