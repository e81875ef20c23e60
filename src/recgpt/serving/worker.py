"""The generic nearline loop: take a user with new events off the store's queue, refresh their list, store it.

Pipelines plug in through the `Refresher` protocol (RecGPT's per-user chain is
`recgpt.pipeline.refresh.RecGPTRefresher`), so this module knows nothing of LLMs or stages. The same
loop runs as a thread of the server (`recgpt serve --workers nearline`) or as its own process
(`recgpt nearline --store URL`); several may run against one store, since `Store.claim` hands each
user to one worker at a time. A failed refresh is recorded on the queue entry (`Store.fail`) and
the loop goes on: the user keeps the list they had and is tried again after a growing back-off (a user
the run does not know, `UnknownUser`, is not retried: they keep the popularity fallback).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from recgpt.serving.service import UnknownUser

if TYPE_CHECKING:
    from recgpt.serving.store import Claim, Store, StoredList

log = logging.getLogger("recgpt.serving.worker")

DEFAULT_POLL_S = 0.5
DEFAULT_STALE_AFTER_S = 300.0  # a claim older than this is taken to be a dead worker's and handed out again
RETRY_BASE_S, RETRY_MAX_S = 2.0, 600.0  # a failed user waits 2, 4, 8, ... s (at most 10 min) before a retry
MAX_ATTEMPTS = (
    8  # then the user leaves the queue (about 8.5 min of retries) until new events queue them again
)


def retry_after(attempts: int) -> float:
    """Back-off before the next try of a user whose refresh failed `attempts` times before this one."""
    return min(RETRY_MAX_S, RETRY_BASE_S * 2.0 ** min(attempts, 20))


class Refresher(Protocol):
    def refresh(self, user_id: str, events: list[dict]) -> list[dict]:
        """The user's new list (Recommendation dicts, rank order) from the run plus the user's store
        events (all of them; the refresher decides what is new). May take seconds (LLM)."""
        ...


@dataclass(frozen=True)
class Refreshed:
    """One landed refresh: the stored list and the lag from the user's oldest unrefreshed event to it."""

    user_id: str
    version: int
    seconds: float  # time spent in the refresher
    lag_s: float  # stored list's created_at - the claim's first_event_at


OnRefreshed = Callable[["StoredList", Refreshed], None]
OnFailed = Callable[[str, BaseException], None]


class RefreshWorker:
    """Claim -> events -> `refresher.refresh` -> `put_list` -> `finish`, in a background thread."""

    def __init__(
        self,
        store: Store,
        refresher: Refresher,
        *,
        poll_s: float = DEFAULT_POLL_S,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
        on_refreshed: OnRefreshed | None = None,
        on_failed: OnFailed | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """`stop`: an event another thread (or a signal handler) sets to end the loop."""
        self.store, self.refresher = store, refresher
        self.poll_s, self.stale_after_s = poll_s, stale_after_s
        self.on_refreshed, self.on_failed = on_refreshed, on_failed
        self._stop = stop or threading.Event()
        self._thread: threading.Thread | None = None
        self.refreshed = 0
        self.failed = 0

    def run_once(self) -> int:
        """Refresh the users one claim hands out; how many were handled (0: the queue is empty)."""
        claims = self.store.claim(1, stale_after_s=self.stale_after_s)
        for claim in claims:
            self._refresh(claim)
        return len(claims)

    def _refresh(self, claim: Claim) -> None:
        user = claim.user_id
        start = time.perf_counter()
        try:
            items = self.refresher.refresh(user, self.store.user_events(user))
            stored = self.store.put_list(user, items, "nearline")
            self.store.finish(claim)
        except Exception as e:  # one user's failure must not stop the others' refreshes
            self.failed += 1
            self._failed(claim, e)
            if self.on_failed is not None:
                self.on_failed(user, e)
            return
        self.refreshed += 1
        done = Refreshed(
            user, stored.version, time.perf_counter() - start, stored.created_at - claim.first_event_at
        )
        log.info("refreshed user %r: list version %d, lag %.2f s", user, done.version, done.lag_s)
        if self.on_refreshed is not None:
            self.on_refreshed(stored, done)

    def _failed(self, claim: Claim, e: Exception) -> None:
        """Back off and retry, or drop the user from the queue when no retry can help: a user the run
        does not know (they are served the fallback until new events queue them again), or after
        `MAX_ATTEMPTS` failures (the error stays in the log; the user keeps the list they had)."""
        user = claim.user_id
        give_up = isinstance(e, UnknownUser) or claim.attempts + 1 >= MAX_ATTEMPTS
        log.warning(
            "nearline refresh of user %r failed (attempt %d%s): %r",
            user,
            claim.attempts + 1,
            ", dropped from the queue" if give_up else "",
            e,
        )
        try:
            if give_up:
                self.store.finish(claim)
            else:
                self.store.fail(claim, repr(e), retry_after_s=retry_after(claim.attempts))
        except Exception as e2:  # the store itself is down: the claim goes stale and is retried
            log.error("could not record the failed refresh of %r: %r", user, e2)

    def run(self, *, once: bool = False) -> None:
        """Loop until `stop()` (or, with `once`, until no queued user is ready: failed users wait out their
        back-off), sleeping `poll_s` when idle."""
        while not self._stop.is_set():
            try:
                handled = self.run_once()
            except Exception as e:  # the store is unreachable: wait and try again
                log.error("nearline worker cannot claim from the store: %r", e)
                handled = 0
                if once:
                    raise
            if handled == 0:
                if once:
                    return
                self._stop.wait(self.poll_s)

    def start(self) -> RefreshWorker:
        """Run the loop in a daemon thread."""
        if self._thread is not None:
            raise RuntimeError("the refresh worker is already running")
        self._thread = threading.Thread(target=self.run, name="recgpt-nearline", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 30.0) -> None:
        """Ask the loop to stop and wait for the refresh in progress to land (or `timeout`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


def run_forever(
    store: Store,
    refresher: Refresher,
    *,
    poll_s: float = DEFAULT_POLL_S,
    once: bool = False,
    on_refreshed: OnRefreshed | None = None,
    on_failed: OnFailed | None = None,
    stop: threading.Event | None = None,
) -> RefreshWorker:
    """The worker as a process's main loop (`recgpt nearline --store`): returns when the queue is empty
    (`once`) or `stop` is set; Ctrl-C stops it between refreshes."""
    worker = RefreshWorker(
        store, refresher, poll_s=poll_s, on_refreshed=on_refreshed, on_failed=on_failed, stop=stop
    )
    try:
        worker.run(once=once)
    except KeyboardInterrupt:
        worker._stop.set()
    return worker


__all__ = ["DEFAULT_POLL_S", "RefreshWorker", "Refreshed", "Refresher", "run_forever"]
