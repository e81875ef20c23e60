"""The running server's state: the run, the store, the list cache kept fresh from the store, the worker.

`LiveLists.start()` seeds the store with the run's lists (users with no list yet), loads every
user's current list into the cache and starts a poller thread that picks up new list versions
from `Store.versions_since`, whoever wrote them (this server's worker thread or a separate
`recgpt nearline --store` process), and refreshes the queue gauges. The lag metric is measured
here, from the moment this server acknowledged a user's event to the moment it sees their next
list version, so it covers both kinds of worker.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from recgpt.serving.fallback import RunCatalogue
from recgpt.serving.listcache import CachedList, ListCache
from recgpt.serving.metrics import ServingMetrics
from recgpt.serving.service import RecommendationService, UnknownUser
from recgpt.serving.worker import Refreshed, Refresher, RefreshWorker

if TYPE_CHECKING:
    from recgpt.serving.store import Store, StoredList

log = logging.getLogger("recgpt.serving")

WHOLE_LIST = 1_000_000  # k that returns a run list whole
POLL_OVERLAP_S = 5.0  # re-read lists created this long before the newest seen (commit order != clock order)
MAX_PENDING = 100_000  # users whose lag is being timed; beyond this new ones are not timed


class LiveLists:
    """Everything the routes read, and the threads that keep it fresh."""

    def __init__(
        self,
        service: RecommendationService,
        store: Store,
        *,
        refresher: Refresher | None = None,
        workers: bool = False,
        poll_s: float = 0.5,
        max_staleness_s: float = 60.0,
        metrics: ServingMetrics | None = None,
    ) -> None:
        if workers and refresher is None:
            raise ValueError("workers=True needs a refresher (the pipeline's per-user refresh)")
        self.service, self.store, self.refresher = service, store, refresher
        self.workers, self.poll_s, self.max_staleness_s = workers, poll_s, max_staleness_s
        self.metrics = metrics or ServingMetrics()
        self.cache = ListCache()
        self.known = frozenset(service.users())
        self.catalogue: RunCatalogue | None = None
        self.fallback: CachedList | None = None
        self.worker: RefreshWorker | None = None
        self.started_at = time.time()
        self._seen = 0.0  # newest created_at the poller has read
        self._pending: dict[
            str, float
        ] = {}  # user -> when this server acknowledged their oldest unrefreshed event
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # ------------------------------------------------------------------ start and stop

    def start(self) -> None:
        """Seed, load, and start the poller (and the worker thread when asked); blocking, run it off the loop."""
        self.catalogue = RunCatalogue.build(self.service.run_dir)
        self.fallback = CachedList.of("", 0, self.started_at, "fallback", self.catalogue.fallback)
        lists = {
            u: [r.model_dump(mode="json") for r in self.service.recommend(u, WHOLE_LIST)]
            for u in self.service.users()
        }
        written = self.store.seed_lists(lists, "run")
        log.info("seeded %d of %d users' lists into the store", written, len(lists))
        self.refresh_cache(since=0.0)
        self._stop.clear()
        self._poller = threading.Thread(target=self._poll_loop, name="recgpt-list-poller", daemon=True)
        self._poller.start()
        if self.workers and self.refresher is not None:
            self.worker = RefreshWorker(
                self.store,
                self.refresher,
                poll_s=self.poll_s,
                on_refreshed=self._refreshed,
                on_failed=self._failed,
            ).start()

    def stop(self) -> None:
        """Stop the worker (letting a refresh in progress land) and the poller."""
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        self._stop.set()
        if self._poller is not None:
            self._poller.join(10.0)
            self._poller = None

    # ------------------------------------------------------------------ keeping the cache fresh

    def refresh_cache(self, since: float | None = None) -> int:
        """Read lists created after `since` (default: just before the newest seen) that are newer than the
        cache's into it; update the queue gauges. Returns how many lists landed."""
        after = self._seen - POLL_OVERLAP_S if since is None else since
        versions = self.store.versions_since(after)
        landed = 0
        stale = self.cache.stale(versions)
        if stale:
            for stored in self.store.current_lists(None if since == 0.0 else stale).values():
                landed += self.land(stored)
        if versions:
            self._seen = max(self._seen, max(created for _, created in versions.values()))
        stats = self.store.queue_stats()
        self.metrics.queue_pending.set(stats.get("pending", 0))
        self.metrics.queue_oldest.set(stats.get("oldest_age_s", 0.0))
        self.metrics.lists_cached.set(len(self.cache))
        return landed

    def land(self, stored: StoredList) -> bool:
        """Put a stored list in the cache (if newer) and time the lag of the events it answers."""
        entry = CachedList.of(stored.user_id, stored.version, stored.created_at, stored.source, stored.items)
        if not self.cache.put(entry):
            return False
        with self._lock:
            acked = self._pending.get(stored.user_id)
            if acked is not None and stored.created_at >= acked:
                del self._pending[stored.user_id]
                self.metrics.lag.observe(stored.created_at - acked)
        return True

    def acknowledged(self, users: list[str], at: float) -> None:
        """Events of `users` were committed at `at`: start their lag clocks (the oldest unrefreshed counts).
        Only users with a list are timed: one the run does not know gets no refresh, so no lag."""
        with self._lock:
            for user in users:
                if user not in self._pending and len(self._pending) < MAX_PENDING and user in self.cache:
                    self._pending[user] = at

    def _refreshed(self, stored: StoredList, done: Refreshed) -> None:
        self.metrics.refreshes.labels("ok").inc()
        self.land(stored)

    def _failed(self, user: str, e: BaseException) -> None:
        self.metrics.refreshes.labels("unknown_user" if isinstance(e, UnknownUser) else "failed").inc()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.refresh_cache()
            except Exception as e:  # the store is briefly unreachable: serve the cache, try again
                self.metrics.poll_errors.inc()
                log.warning("polling the store for new lists failed: %r", e)

    # ------------------------------------------------------------------ answers

    def current(self, user_id: str) -> tuple[CachedList, bool]:
        """(the list to serve, is_fallback): the cached list, else the popularity fallback."""
        entry = self.cache.get(user_id)
        if entry is not None:
            self.metrics.cache.labels("hit").inc()
            return entry, False
        self.metrics.cache.labels("miss").inc()
        self.metrics.fallbacks.inc()
        if self.fallback is None:
            raise RuntimeError("the server has not started")
        return self.fallback, True

    def health(self) -> dict[str, object]:
        """Liveness and freshness: the queue's oldest unrefreshed event against the maximum staleness."""
        stats = self.store.queue_stats()
        oldest = float(stats.get("oldest_age_s", 0.0))
        fresh = oldest <= self.max_staleness_s
        return {
            "status": "ok" if fresh else "degraded",
            "run": str(self.service.run_dir),
            "store": self.store.dialect,
            "users": len(self.known),
            "lists_cached": len(self.cache),
            "queue": {"pending": int(stats.get("pending", 0)), "oldest_age_s": round(oldest, 3)},
            "max_staleness_s": self.max_staleness_s,
            "worker": self.worker is not None,
            **(
                {}
                if fresh
                else {
                    "reason": f"an event has waited {oldest:.0f} s for a refresh (max {self.max_staleness_s:.0f} s)"
                }
            ),
        }


__all__ = ["LiveLists"]
