"""Prometheus metrics on a per-app registry.

Each app owns its ``CollectorRegistry`` (not prometheus-client's global one) so several
apps in one process — tests, benchmarks — never clash over metric names.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import BaseRoute, Match

from vqvae.drift import CodeDrift, DriftStatus
from vqvae.health import CodebookHealth

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
UNMATCHED = "unmatched"
DRIFT_STATUSES: tuple[DriftStatus, ...] = ("ok", "drifted", "insufficient_data")


class ServiceMetrics:
    """All metrics of one app; the batcher and the middleware write, ``/metrics`` reads."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "monolith_http_requests", "HTTP requests by route template and status",
            ["method", "route", "status"], registry=r,
        )
        self.latency = Histogram(
            "monolith_http_request_duration_seconds", "HTTP request latency by route template",
            ["method", "route"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.vectors_encoded = Counter("monolith_vectors_encoded", "Vectors encoded to codes", registry=r)
        self.vectors_decoded = Counter("monolith_vectors_decoded", "Code rows decoded to vectors", registry=r)
        self.texts_embedded = Counter("monolith_texts_embedded", "Texts embedded by the text model", registry=r)
        self.batch_size = Histogram(
            "monolith_batch_size", "Rows per model forward pass (after micro-batching)",
            ["op"], buckets=BATCH_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge("monolith_queue_depth", "Requests waiting for or in model work", registry=r)
        self.rejected = Counter("monolith_rejected", "Requests refused with 503 because the queue was full",
                                registry=r)
        self.ready = Gauge("monolith_ready", "1 once the model (and text model, if enabled) is loaded",
                           registry=r)
        self.code_usage = Gauge("monolith_code_usage_ratio", "Share of codes used by served traffic, per head",
                                ["head"], registry=r)
        self.code_dead = Gauge("monolith_code_dead", "Codes never assigned by served traffic, per head",
                               ["head"], registry=r)
        self.code_entropy = Gauge("monolith_code_entropy_bits", "Entropy of served codes in bits, per head",
                                  ["head"], registry=r)
        self.code_norm_entropy = Gauge(
            "monolith_code_normalized_entropy", "Entropy of served codes over log2(codebook size), per head",
            ["head"], registry=r,
        )
        # Drift of served traffic from the checkpoint's reference (service.drift), kept current
        # after every encode pass; absent where the checkpoint stores nothing to compare with.
        self.drift_status = Gauge(
            "monolith_drift_status", "1 for the current drift status of served traffic against the checkpoint's "
            "reference (ok, drifted, insufficient_data), 0 for the others", ["status"], registry=r,
        )
        self.drift_transitions = Counter(
            "monolith_drift_transitions", "Changes of the drift status, by the status entered", ["status"],
            registry=r,
        )
        self.drift_cosine = Gauge(
            "monolith_drift_reconstruction_cosine",
            "Mean reconstruction cosine of sampled served traffic (NaN until measured)", registry=r,
        )
        self.drift_js = Gauge(
            "monolith_drift_js_divergence_bits",
            "Mean Jensen-Shannon divergence of served code usage from the reference, bits (NaN until counted)",
            registry=r,
        )

    def set_drift_status(self, status: DriftStatus) -> None:
        for s in DRIFT_STATUSES:
            self.drift_status.labels(s).set(1 if s == status else 0)

    def set_drift(self, drift: CodeDrift) -> None:
        """Copy a drift judgement (``vqvae.drift.code_drift``) into the gauges."""
        self.set_drift_status(drift.status)
        nan = float("nan")
        self.drift_cosine.set(nan if drift.reconstruction_cosine is None else drift.reconstruction_cosine)
        self.drift_js.set(nan if drift.js_divergence is None else drift.js_divergence)

    def set_codebook(self, health: CodebookHealth) -> None:
        """Copy per-head statistics (computed by ``vqvae.health``) into the gauges."""
        for h in health.heads:
            label = str(h.head)
            self.code_usage.labels(label).set(h.usage)
            self.code_dead.labels(label).set(h.dead)
            self.code_entropy.labels(label).set(h.entropy_bits)
            self.code_norm_entropy.labels(label).set(h.normalized_entropy)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def route_template(scope: Scope, routes: Sequence[BaseRoute] = ()) -> str:
    """The matched route's path template (``/collections/{name}``), never the raw path:
    raw paths would give one time series per collection name or random URL.

    The router records the route it picked in ``scope["route"]``; for requests answered
    before routing (a 413 from the body limit) the template is looked up in ``routes``.
    """
    path = getattr(scope.get("route"), "path", None)
    if path:
        return path
    for candidate in routes:
        try:
            match, _ = candidate.matches(dict(scope))
        except Exception:  # a label lookup must never fail a request
            continue
        if match == Match.FULL:
            return getattr(candidate, "path", None) or UNMATCHED
    return UNMATCHED


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times every HTTP request, including ones refused by
    other middleware (413) or by exception handlers."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, routes: Sequence[BaseRoute] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        unrouted = dict(scope)  # a mount rewrites root_path in place: match the labels on the original

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            template = route_template({**unrouted, "route": scope.get("route")}, self.routes)
            method = scope.get("method", "")
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - start)
