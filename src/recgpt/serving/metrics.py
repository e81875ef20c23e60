"""Prometheus metrics of one server: requests, latency, list-cache hits, events, the refresh queue and lag.

Each app gets its own `CollectorRegistry` (not the process-global one), so several apps in one process
(tests, the benchmark) never collide and `/metrics` shows only this server. `RequestMetrics` is a
plain ASGI middleware (no per-request task or body copy) that labels each request with its route
template, so `/v1/users/{user_id}/recommendations` is one series however many users call it.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LAG_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
UNMATCHED = "unmatched"  # the route label of a request no route matched (404s): one series, not one per path


class ServingMetrics:
    """The metrics of one app; `render()` is the body of `GET /metrics`."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "recgpt_http_requests",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "recgpt_http_request_seconds",
            "Request latency in the app (routing to the last body byte)",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cache = Counter(
            "recgpt_list_cache_lookups", "List cache lookups by result", ["result"], registry=r
        )
        self.fallbacks = Counter(
            "recgpt_fallback_lists", "Fallback lists served to users the run does not know", registry=r
        )
        self.events = Counter("recgpt_events", "Events posted, by outcome", ["outcome"], registry=r)
        self.lists_cached = Gauge("recgpt_lists_cached", "Users with a list in the cache", registry=r)
        self.queue_pending = Gauge(
            "recgpt_refresh_queue_pending", "Users waiting for a nearline refresh", registry=r
        )
        self.queue_oldest = Gauge(
            "recgpt_refresh_queue_oldest_age_seconds", "Age of the oldest unrefreshed event", registry=r
        )
        self.lag = Histogram(
            "recgpt_refresh_lag_seconds",
            "Event acknowledged -> a new list version for its user seen by this server",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.refreshes = Counter(
            "recgpt_refreshes", "Nearline refreshes by this process's worker", ["outcome"], registry=r
        )
        self.poll_errors = Counter(
            "recgpt_store_poll_errors", "Failed polls of the store for new list versions", registry=r
        )
        for result in ("hit", "miss"):
            self.cache.labels(result)
        for outcome in ("accepted", "duplicate"):
            self.events.labels(outcome)
        for outcome in ("ok", "failed", "unknown_user"):
            self.refreshes.labels(outcome)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def route_label(scope: dict[str, Any]) -> str:
    """The route template a request matched; a mounted app (static files) is "<mount>/{path}"."""
    route = getattr(scope.get("route"), "path", None)
    if route:
        return str(route)
    mounted = scope.get("root_path")  # set by a Mount for the app it hands the request to
    return f"{mounted}/{{path}}" if mounted else UNMATCHED


class RequestMetrics:
    """ASGI middleware: count each HTTP request by (method, route template, status) and time it."""

    def __init__(self, app: Any, metrics: ServingMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            label = route_label(scope)
            method = scope["method"]
            self.metrics.requests.labels(method, label, str(status)).inc()
            self.metrics.latency.labels(method, label).observe(time.perf_counter() - start)


__all__ = ["LAG_BUCKETS", "LATENCY_BUCKETS", "RequestMetrics", "ServingMetrics"]
