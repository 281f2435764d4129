"""Where received files land: every path reached from the receiving directory, one name at a time.

The receiving directory is opened once. Each directory below it is opened relative to its parent's descriptor
with ``O_NOFOLLOW``, so a symbolic link, already there or planted while a session runs, is refused instead of
followed; nothing is ever opened by a path string. A part file is created with ``O_CREAT | O_EXCL`` (it cannot
be a planted link or another file), reopened only if it is a regular file with one link that this user owns,
and locked so that two sessions never write one file. A finished file takes its final name with ``link()``,
which fails rather than replace a file that appeared meanwhile, or with ``rename()`` where replacing is meant
(``--overwrite``). Modes are the sender's permission bits less the umask: never set-uid, set-gid or sticky.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections import OrderedDict
from dataclasses import dataclass

from sockcat.core.errors import SockcatError, describe
from sockcat.core.transfer import part_name, shown_path

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
OPEN_DIRS = 32  # directory descriptors a session keeps open (most recently used)


class Refused(SockcatError):
    """What is on disk forbids the session: the message names the path (escaped)."""


def current_umask() -> int:
    """The process's umask (read once, before threads start: reading it means setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def open_root(path: str) -> int:
    """The receiving directory (created if missing, like ``mkdir -p``); a path the user gave, so it may be
    reached through links; everything below it may not."""
    os.makedirs(path, exist_ok=True)
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


@dataclass(frozen=True, slots=True)
class Existing:
    """A file found under a final or part name."""

    st: os.stat_result

    @property
    def regular(self) -> bool:
        return stat.S_ISREG(self.st.st_mode)

    @property
    def link(self) -> bool:
        return stat.S_ISLNK(self.st.st_mode)


class Tree:
    """One session's view of the receiving directory: directory descriptors by path, opened safely."""

    def __init__(self, root_fd: int) -> None:
        self.root = root_fd
        self._dirs: OrderedDict[tuple[str, ...], int] = OrderedDict()

    def close(self) -> None:
        for fd in self._dirs.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._dirs.clear()

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _cache(self, parts: tuple[str, ...], fd: int) -> int:
        self._dirs[parts] = fd
        while len(self._dirs) > OPEN_DIRS:
            _, old = self._dirs.popitem(last=False)
            os.close(old)
        return fd

    def directory(self, parts: tuple[str, ...], *, create: bool) -> int | None:
        """The descriptor of directory ``parts`` (relative to the root), made if ``create``; None if it does not
        exist and ``create`` is false. Refused if any part is a link or not a directory."""
        if not parts:
            return self.root
        fd = self._dirs.get(parts)
        if fd is not None:
            self._dirs.move_to_end(parts)
            return fd
        parent = self.directory(parts[:-1], create=create)
        if parent is None:
            return None
        name = parts[-1]
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o777, dir_fd=parent)  # the umask applies
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if create:
                raise Refused(f"{shown_path(parts)}: vanished while it was being made") from None
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                kind = "a symbolic link" if self._is_link(parent, name) else "not a directory"
                raise Refused(f"{shown_path(parts)}: exists and is {kind}; refused") from None
            raise Refused(f"{shown_path(parts)}: {describe(exc)}") from None
        return self._cache(parts, fd)

    @staticmethod
    def _is_link(dir_fd: int, name: str) -> bool:
        try:
            return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            return False

    @staticmethod
    def lookup(dir_fd: int, name: str) -> Existing | None:
        """What is at ``name`` in a directory, links not followed; None if nothing."""
        try:
            return Existing(os.stat(name, dir_fd=dir_fd, follow_symlinks=False))
        except FileNotFoundError:
            return None


def open_existing(dir_fd: int, name: str, st: os.stat_result) -> int | None:
    """A descriptor for reading a regular file that ``st`` describes, or None if it changed or is not one."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    now = os.fstat(fd)
    if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        return None
    return fd


def usable_part(st: os.stat_result) -> bool:
    """A part worth resuming: a regular file with one link, owned by this user (not one a local user planted)."""
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid == os.geteuid()


def _lock(fd: int, shown: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Refused(f"{shown}: another session is receiving this file") from None


def _same_file(dir_fd: int, name: str, fd: int) -> bool:
    """Whether ``name`` in the directory is still the file open as ``fd`` (links not followed)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    now = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)


def _clear_part(dir_fd: int, part: str, shown: str) -> None:
    """Remove whatever holds a part file's name, unless a session is writing it: a regular file is removed only
    once its lock is ours; a link (never followed) or anything else, by name."""
    try:
        fd = os.open(part, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    except OSError:
        fd = -1  # a link (ELOOP), or nothing this user may open: remove the name below
    try:
        if fd >= 0:
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                raise Refused(f"{shown}: a directory holds its part file's name; refused")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Refused(f"{shown}: another session is receiving this file") from None
            if not _same_file(dir_fd, part, fd):
                raise Refused(f"{shown}: another session is receiving this file")
        os.unlink(part, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise Refused(f"{shown}: cannot remove an old part file: {describe(exc)}") from None
    finally:
        if fd >= 0:
            os.close(fd)


def open_part(dir_fd: int, name: str, shown: str, resume: os.stat_result | None) -> tuple[int, int]:
    """(descriptor, bytes kept) of the part file for final name ``name``, locked for this session.

    ``resume``: the part as it was offered; it is reopened only if it is still that very file (same inode,
    size and time, still usable); otherwise, and without ``resume``, whatever has the part's name is removed
    (the name itself, never what a link points to, and never a part another session holds) and a new empty part
    is created exclusively."""
    part = part_name(name)
    if resume is not None:
        try:
            fd = os.open(part, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            fd = -1
        if fd >= 0:
            now = os.fstat(fd)
            same = (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns) == (
                resume.st_dev,
                resume.st_ino,
                resume.st_size,
                resume.st_mtime_ns,
            )
            if same and usable_part(now):
                _lock(fd, shown)
                os.set_blocking(fd, True)
                os.lseek(fd, 0, os.SEEK_END)
                return fd, now.st_size
            os.close(fd)
        raise Refused(f"{shown}: its part file changed during the session")
    _clear_part(dir_fd, part, shown)
    try:
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except FileExistsError:
        raise Refused(f"{shown}: another session is receiving this file") from None
    except OSError as exc:
        raise Refused(f"{shown}: cannot create its part file: {describe(exc)}") from None
    _lock(fd, shown)
    return fd, 0


def part_in_use(dir_fd: int, name: str) -> bool:
    """Whether a session holds the part file of final name ``name`` (its lock is taken)."""
    try:
        fd = os.open(part_name(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # (the lock, if it was taken here, goes with it)
    return False


def remove_part(dir_fd: int, name: str, fd: int) -> None:
    """Remove this session's part (open as ``fd``) by name, if the name is still that file."""
    part = part_name(name)
    if _same_file(dir_fd, part, fd):
        with contextlib.suppress(OSError):
            os.unlink(part, dir_fd=dir_fd)


def remove_idle_part(dir_fd: int, name: str) -> None:
    """Remove a kept part that no session is writing (a locked one stays)."""
    part = part_name(name)
    try:
        fd = os.open(part, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            remove_part(dir_fd, name, fd)
    except OSError:
        pass  # locked: a session is writing it again
    finally:
        os.close(fd)


def install(dir_fd: int, name: str, fd: int, mode: int, umask: int, *, replace: bool, shown: str) -> None:
    """Give the checked part (open as ``fd``) its final name and mode. Without ``replace`` an existing final
    name is never replaced, even one that appeared while the file was arriving."""
    os.fchmod(fd, mode & 0o777 & ~umask)
    part = part_name(name)
    if not _same_file(dir_fd, part, fd):
        raise Refused(f"{shown}: its part file was replaced during the session; not kept")
    if replace:
        os.rename(part, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return
    try:
        os.link(part, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError:
        raise Refused(f"{shown}: exists (it appeared during the session); not replaced") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
            raise
        # A file system without hard links: check, then rename (a name that appears in between is replaced).
        if Tree.lookup(dir_fd, name) is not None:
            raise Refused(f"{shown}: exists (it appeared during the session); not replaced") from None
        os.rename(part, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return
    os.unlink(part, dir_fd=dir_fd)
