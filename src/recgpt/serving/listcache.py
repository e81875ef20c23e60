"""The server's in-memory list cache: every user's current list, serialised once, so a read is a dict lookup.

The request path of `GET /v1/users/{id}/recommendations` never touches the database or an LLM: the
list is serialised when it lands (at start, or when the poller sees a new version in the store) and a
request for the top k joins the first k pre-encoded items. Writers replace whole entries under a
lock; readers take a reference to an immutable entry, so a read never sees half a list.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


def _encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True)
class CachedList:
    """One user's list as stored (`items`: Recommendation dicts in rank order), with each item pre-encoded."""

    user_id: str
    version: int
    created_at: float
    source: str
    items: tuple[dict[str, Any], ...]
    encoded: tuple[bytes, ...]

    @classmethod
    def of(
        cls, user_id: str, version: int, created_at: float, source: str, items: Sequence[dict[str, Any]]
    ) -> CachedList:
        return cls(user_id, version, created_at, source, tuple(items), tuple(_encode(i) for i in items))

    def render(self, k: int, *, user_id: str | None = None, fallback: bool = False) -> bytes:
        """The `RecommendationList` JSON of the top `k` (`user_id` overrides the owner: the shared fallback)."""
        head = {
            "user_id": self.user_id if user_id is None else user_id,
            "version": self.version,
            "created_at": self.created_at,
            "source": self.source,
            "fallback": fallback,
        }
        return _encode(head)[:-1] + b',"items":[' + b",".join(self.encoded[:k]) + b"]}"


class ListCache:
    """user -> `CachedList`, newest version wins; safe to share between the event loop and worker threads."""

    def __init__(self) -> None:
        self._lists: dict[str, CachedList] = {}
        self._lock = threading.Lock()

    def get(self, user_id: str) -> CachedList | None:
        return self._lists.get(user_id)  # a dict read is atomic; entries are immutable

    def put(self, entry: CachedList) -> bool:
        """Store `entry` unless the cache already holds this or a newer version; True when it was stored."""
        with self._lock:
            old = self._lists.get(entry.user_id)
            if old is not None and old.version >= entry.version:
                return False
            self._lists[entry.user_id] = entry
            return True

    def version(self, user_id: str) -> int:
        """The cached version of the user's list (0 when none is cached)."""
        entry = self._lists.get(user_id)
        return 0 if entry is None else entry.version

    def stale(self, versions: Mapping[str, tuple[int, float]]) -> list[str]:
        """Users whose `versions` entry (version, created_at) is newer than what the cache holds."""
        return [u for u, (v, _) in versions.items() if v > self.version(u)]

    def users(self) -> Iterable[str]:
        return list(self._lists)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._lists

    def __len__(self) -> int:
        return len(self._lists)


__all__ = ["CachedList", "ListCache"]
