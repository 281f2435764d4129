"""Is a Unix socket file in use? Decided without connecting to it.

Connecting to a live listener to find out would queue a phantom empty connection on it (a one-shot
server would then accept that and exit). Instead the kernel's own table of Unix sockets is read:

1. ``sock_diag`` over netlink (``UNIX_DIAG_VFS``): the exact answer, matching the file's inode and device;
2. ``/proc/net/unix``: matching the bound path (flag ``__SO_ACCEPTCON`` marks a listener);
3. neither available: ``None``, and the caller falls back to a connect probe.

A stream or seqpacket file is in use when a socket *listens* on it (accepted connections that outlive
their listener do not count: a connect to the file is refused, the test of a dead listener in
docs/reference.md#addresses).
A datagram file is in use when any socket is bound to it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_UDIAG_SHOW_VFS = 0x2
_UNIX_DIAG_VFS = 1
_TCP_LISTEN = 10
_ACCEPTCON = 0x10000
_NLMSG_HDR = struct.Struct("=IHHII")
_DIAG_REQ = struct.Struct("=BBHIIIII")
_DIAG_MSG = struct.Struct("=BBBBIII")
_ATTR = struct.Struct("=HH")
_VFS = struct.Struct("=II")


def _in_use(kind: int, state_listening: bool) -> bool:
    return kind == socket.SOCK_DGRAM or state_listening


def _kernel_dev(st_dev: int) -> int:
    """``st_dev`` as the kernel stores it (``MKDEV``: 12-bit major above a 20-bit minor)."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def _by_netlink(st: os.stat_result) -> bool | None:
    try:
        nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG)
    except (OSError, AttributeError):
        return None
    want = (st.st_ino & 0xFFFFFFFF, _kernel_dev(st.st_dev) & 0xFFFFFFFF)
    found = unsure = False
    with nl:
        try:
            nl.settimeout(2.0)
            req = _DIAG_REQ.pack(socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0, _UDIAG_SHOW_VFS, 0xFFFFFFFF, 0xFFFFFFFF)
            nl.sendall(
                _NLMSG_HDR.pack(_NLMSG_HDR.size + len(req), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0)
                + req
            )
            while True:
                data = nl.recv(1 << 16)
                if not data:
                    return None
                off = 0
                while off + _NLMSG_HDR.size <= len(data):
                    length, mtype = _NLMSG_HDR.unpack_from(data, off)[:2]
                    if length < _NLMSG_HDR.size:
                        return None
                    if mtype == _NLMSG_DONE:
                        # Same inode on another device number (overlay file systems report theirs): ask /proc.
                        return True if found else None if unsure else False
                    if mtype == _NLMSG_ERROR:
                        return None
                    body = off + _NLMSG_HDR.size
                    _fam, kind, state = _DIAG_MSG.unpack_from(data, body)[:3]
                    attr = body + _DIAG_MSG.size
                    while attr + _ATTR.size <= off + length:
                        alen, atype = _ATTR.unpack_from(data, attr)
                        if alen < _ATTR.size:
                            break
                        if atype == _UNIX_DIAG_VFS and alen >= _ATTR.size + _VFS.size:
                            ino, dev = _VFS.unpack_from(data, attr + _ATTR.size)
                            if ino == want[0] and _in_use(kind, state == _TCP_LISTEN):
                                found = found or dev == want[1]
                                unsure = unsure or dev != want[1]
                        attr += (alen + 3) & ~3
                    off += (length + 3) & ~3
        except (OSError, struct.error):
            return None


def _same_file(bound: str, st: os.stat_result) -> bool:
    with contextlib.suppress(OSError):
        other = os.stat(bound)
        return (other.st_ino, other.st_dev) == (st.st_ino, st.st_dev)
    return False


def _by_proc(path: str, st: os.stat_result) -> bool | None:
    try:
        with open("/proc/net/unix", "rb") as f:
            lines = f.read().decode(errors="surrogateescape").splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        # Num RefCount Protocol Flags Type St Inode Path (the path may hold spaces: split 7 times only)
        fields = line.split(None, 7)
        if len(fields) < 8 or fields[7].startswith("@"):
            continue
        try:
            flags, kind = int(fields[3], 16), int(fields[4], 16)
        except ValueError:
            continue
        if not _in_use(kind, bool(flags & _ACCEPTCON)):
            continue
        bound = fields[7]
        # A relative path was bound from a working directory we cannot know: ours is the best guess.
        if bound == path or os.path.abspath(bound) == os.path.abspath(path) or _same_file(bound, st):
            return True
    return False


def unix_path_in_use(path: str, st: os.stat_result) -> bool | None:
    """True if a live socket listens on (or, datagram, is bound to) the socket file ``path``;
    None if the kernel's socket table cannot be read here (the caller then probes by connecting)."""
    answer = _by_netlink(st)
    if answer is None:
        answer = _by_proc(path, st)
    return answer
