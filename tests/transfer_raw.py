"""A raw transfer peer written from docs/transfer.md, for the tests that play a hostile (or broken) sender.

It speaks version 2 over a plain socket, byte by byte as the document says, and lets a test send anything at
any step. With a code it runs the key exchange and seals records through sockcat's own primitives (SPAKE2 and
AES-GCM are not worth writing twice); everything above the records is written out here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
from typing import Any

from sockcat.core.pake import HEADER, Opener, Sealer, SenderHandshake

HELLO = b"SOCKCAT-TRANSFER 2\n"


def line(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


class RawSender:
    def __init__(self, port: int | None = None, *, sock: socket.socket | None = None, timeout: float = 20.0) -> None:
        self.sock = sock if sock is not None else socket.create_connection(("127.0.0.1", port or 0), timeout=timeout)
        self.sock.settimeout(timeout)
        self._buf = b""
        self._sealer: Sealer | None = None
        self._opener: Opener | None = None

    # bytes, sealed or not
    def send(self, data: bytes) -> None:
        if self._sealer is None:
            self.sock.sendall(data)
            return
        for pos in range(0, max(len(data), 1), 1 << 20):
            header, body = self._sealer.seal(data[pos : pos + (1 << 20)])
            self.sock.sendall(header + body)

    def _fill(self) -> bool:
        if self._opener is None:
            chunk = self.sock.recv(65536)
            if not chunk:
                return False
            self._buf += chunk
            return True
        header = self._exact_raw(4)
        if header is None:
            return False
        body = self._exact_raw(Opener.length(header))
        assert body is not None
        self._buf += self._opener.open(header, body)
        return True

    def _exact_raw(self, n: int) -> bytes | None:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                return None
            out += chunk
        return out

    def recv_line(self) -> bytes:
        """One line (b"" if the peer closed first)."""
        while b"\n" not in self._buf:
            if not self._fill():
                out, self._buf = self._buf, b""
                return out
        out, _, self._buf = self._buf.partition(b"\n")
        return out + b"\n"

    def msg(self) -> dict[str, Any]:
        """The next message that is not a busy line ({} if the peer closed)."""
        while True:
            raw = self.recv_line()
            if not raw:
                return {}
            obj: dict[str, Any] = json.loads(raw)
            if "busy" not in obj:
                return obj

    # the protocol's steps
    def hello(self, code: str | None = None) -> dict[str, Any]:
        if code is None:
            self.sock.sendall(HELLO + line({"auth": "none"}))
            return self.msg()
        hs = SenderHandshake(code)
        self.sock.sendall(HELLO + line({"auth": "code", "pake": base64.b64encode(hs.start()).decode()}))
        reply = self.msg()
        if "error" in reply:
            return reply
        keys = hs.finish(base64.b64decode(reply["pake"]), base64.b64decode(reply["confirm"]))
        self.sock.sendall(line({"confirm": base64.b64encode(keys.sender_confirm).decode()}))
        self._sealer, self._opener = Sealer(keys.send_to_recv), Opener(keys.recv_to_send)
        return reply

    def manifest(self, files: list[dict[str, Any]], dirs: list[str] = (), total: int | None = None) -> None:  # type: ignore[assignment]
        if total is None:
            total = sum(f["size"] for f in files if isinstance(f.get("size"), int))
        head = {"files": len(files), "dirs": len(dirs), "bytes": total}
        self.send(line(head) + b"".join(line({"dir": d}) for d in dirs) + b"".join(line(f) for f in files))

    def plan_all(self, keep: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
        """Answer the offers (keep each, or not) and return (offers, the answer to the plan)."""
        offers = self.msg()
        if "offers" not in offers:
            return offers, offers
        self.msg()  # hashes
        self.send(line({"plan": [keep] * len(offers["offers"])}))
        return offers, self.msg()

    def file(self, data: bytes, digest: bytes | None = None) -> None:
        self.send(data + (digest if digest is not None else hashlib.sha256(data).digest()))

    def close(self) -> None:
        self.sock.close()


def entry(path: Any, data: bytes = b"", mode: Any = 0o644, size: Any = None) -> dict[str, Any]:
    return {"file": path, "size": len(data) if size is None else size, "mode": mode}


def send_one(port: int, path: str, data: bytes, *, code: str | None = None, mode: int = 0o644) -> dict[str, Any]:
    """A whole honest session of one file; the receiver's last message."""
    s = RawSender(port)
    try:
        reply = s.hello(code)
        if "error" in reply:
            return reply
        s.manifest([entry(path, data, mode)])
        _offers, go = s.plan_all()
        if "error" in go:
            return go
        s.file(data)
        return s.msg()
    finally:
        s.close()


__all__ = ["HEADER", "HELLO", "RawSender", "entry", "line", "send_one"]
