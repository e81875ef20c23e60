"""Answers in completion order from a worker pool, so the engine caches each one the moment it exists.

`Executor.map` returns results in submission order: the first slow answer holds back every faster
one behind it, and a kill while waiting loses them all. `as_completed` hands each answer over as soon
as its worker finishes; pending work is cancelled when the consumer stops early (an exception, a
closed generator), so no worker keeps generating answers nobody will read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, as_completed
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def completed(pool: Executor, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[tuple[int, R]]:
    """(position in `items`, fn(item)) as each call finishes, in any order."""
    futures: dict[Future[R], int] = {pool.submit(fn, item): i for i, item in enumerate(items)}
    try:
        for fut in as_completed(futures):
            yield futures[fut], fut.result()
    finally:
        for fut in futures:
            fut.cancel()


__all__ = ["completed"]
