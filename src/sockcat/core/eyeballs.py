"""Happy eyeballs (RFC 8305) as a plan with no I/O: which address to try next, when, and what to report.

The sync connect (selectors) and the asyncio one (tasks) both drive one :class:`Eyeballs`, so they race the same
addresses in the same order with the same timing:

* the addresses alternate between families, starting with the family of the first one the resolver gave
  (RFC 8305 §4): ``v6, v4, v6, v4, …``;
* the first attempt starts at once; each next one when the last started attempt has had
  :data:`ATTEMPT_DELAY` seconds, or at once when an attempt fails (§5);
* the first attempt to connect wins; when all fail, the error is the last one, with the others grouped as its cause.
"""

from __future__ import annotations

import errno
from typing import Any, TypeVar

ATTEMPT_DELAY = 0.25  # RFC 8305 §5: "Connection Attempt Delay", recommended 250 ms

Info = TypeVar("Info", bound=tuple[Any, ...])  # a getaddrinfo() row: (family, type, proto, canonname?, sockaddr)


def interleave(infos: list[Info]) -> list[Info]:
    """The order to try ``infos`` in: families alternating, the resolver's first family first, each family's own
    order kept."""
    if not infos:
        return []
    first_family = infos[0][0]
    first = [i for i in infos if i[0] == first_family]
    second = [i for i in infos if i[0] != first_family]
    out: list[Info] = []
    for k in range(max(len(first), len(second))):
        out += first[k : k + 1] + second[k : k + 1]
    return out


class Eyeballs:
    """The state of one race. ``now`` is any monotonic clock (``time.monotonic()``, ``loop.time()``)."""

    def __init__(self, infos: list[Info], delay: float = ATTEMPT_DELAY) -> None:
        self.queue: list[Any] = interleave(infos)
        self.delay = delay
        self.next_at = float("-inf")
        self.racing = 0  # attempts started and not yet ended
        self.errors: list[OSError] = []

    def due(self, now: float) -> bool:
        """Whether the next attempt starts now."""
        return bool(self.queue) and (self.racing == 0 or now >= self.next_at)

    def start(self, now: float) -> Any:
        """The address to try now (call when :meth:`due`)."""
        self.racing += 1
        self.next_at = now + self.delay
        return self.queue.pop(0)

    def failed(self, exc: OSError, now: float, *, started: bool = True) -> None:
        """An attempt failed (``started=False``: before it was under way, e.g. making its socket): the next one
        starts at once."""
        if started:
            self.racing -= 1
        self.errors.append(exc)
        self.next_at = now

    def wait(self, now: float) -> float | None:
        """Seconds until the next attempt is due (None: no attempt left to start)."""
        if not self.queue:
            return None
        return 0.0 if self.racing == 0 else max(0.0, self.next_at - now)

    @property
    def lost(self) -> bool:
        """Every attempt has ended, and none connected."""
        return not self.queue and self.racing == 0

    def error(self) -> OSError:
        """What to raise when the race is lost: the last error, the others (if any) grouped as its cause."""
        errors = self.errors or [OSError(errno.EHOSTUNREACH, "no address")]
        last = errors[-1]
        if len(errors) > 1:
            last.__cause__ = ExceptionGroup("every address failed", errors)
        return last


__all__ = ["ATTEMPT_DELAY", "Eyeballs", "interleave"]
