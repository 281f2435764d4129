"""``aio.connect(...)`` and its kin, usable both ways: ``s = await aio.connect(...)`` and
``async with aio.connect(...) as s:`` (as aiohttp's request context managers are)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Generator
from types import TracebackType
from typing import Any, Generic, ParamSpec, Protocol, TypeVar


class _Closable(Protocol):
    async def aclose(self) -> None: ...


T = TypeVar("T", bound=_Closable)
P = ParamSpec("P")


class Opening(Generic[T]):
    """An opening that has not been awaited yet: ``await`` it for the object, or ``async with`` it to have the
    object closed at the end of the block."""

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self._coro = coro
        self._value: T | None = None

    def __await__(self) -> Generator[Any, None, T]:
        return self._coro.__await__()

    async def __aenter__(self) -> T:
        self._value = await self._coro
        return self._value

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._value is not None:
            await self._value.aclose()


def opening(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Opening[T]]:
    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> Opening[T]:
        return Opening(fn(*args, **kwargs))

    return call
