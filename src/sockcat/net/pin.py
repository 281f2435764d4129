"""``--pin``: trust exactly one certificate, named by its SHA-256 (the fingerprint a throwaway listener prints).

A pinned context verifies neither a chain nor a host name (a throwaway certificate has neither a CA nor, always, the
right name); instead every client handshake compares the peer's DER certificate with the pin, and a mismatch ends
the connection before a byte of data moves. Kept apart from :mod:`sockcat.net.tls` so that the handshakes check a
pin without loading the certificate-making code.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import re
import ssl

from sockcat.core.errors import NetworkError, UsageError

_HEX = re.compile(r"[0-9a-fA-F]{64}")
_ATTR = "sockcat_pin"


def parse_pin(text: str) -> bytes:
    """A fingerprint as a listener prints it (``AB:CD:…``) or as plain hex, any case: its 32 bytes."""
    plain = text.strip().replace(":", "")
    if not _HEX.fullmatch(plain):
        raise UsageError(f"bad --pin {text!r}: expected a SHA-256 fingerprint, 64 hex digits (AB:CD:… or plain)")
    return bytes.fromhex(plain)


def pin_context(ctx: ssl.SSLContext, pin: bytes) -> ssl.SSLContext:
    """Make ``ctx`` trust exactly the certificate whose SHA-256 is ``pin`` (checked after each handshake)."""
    ctx.check_hostname = False  # must come before CERT_NONE
    ctx.verify_mode = ssl.CERT_NONE
    setattr(ctx, _ATTR, pin)
    return ctx


def pinned(ctx: ssl.SSLContext) -> bytes | None:
    return getattr(ctx, _ATTR, None)


def check_pin(ctx: ssl.SSLContext, der: bytes | None, where: str) -> None:
    """NetworkError (EPROTO) unless the peer's certificate is the pinned one (a no-op without a pin)."""
    pin = pinned(ctx)
    if pin is None:
        return
    wrong = pin_mismatch(pin, der)
    if wrong is not None:
        raise NetworkError(errno.EPROTO, f"{where}: {wrong}")


def pin_mismatch(pin: bytes, der: bytes | None) -> str | None:
    """Why the DER certificate ``der`` is not the one ``pin`` names (None: it is)."""
    got = hashlib.sha256(der).digest() if der else b""
    if hmac.compare_digest(got, pin):
        return None
    shown = ":".join(f"{b:02X}" for b in got) if got else "none"
    return f"the certificate is not the pinned one (its sha256 is {shown})"
