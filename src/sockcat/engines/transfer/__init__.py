"""File transfer: ``send_files`` and ``recv_files`` (``docs/transfer.md``); the commands are in :mod:`.run`."""

from sockcat.engines.transfer.recv import recv_files
from sockcat.engines.transfer.send import send_files

__all__ = ["recv_files", "send_files"]
