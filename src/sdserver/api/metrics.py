"""Prometheus metrics: a request counter middleware and a collector that reads the job store at scrape time.

Each app has its own registry (never the process-global one), so several apps in one process do not mix.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sdserver.jobs import JobKind, JobStatus
from sdserver.jobstore.stats import read_stats

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Paths that matched no route share one label: raw paths would let any client grow the series without bound.
UNMATCHED = "unmatched"


class Metrics:
    """The registry of one app: request metrics filled by the middleware, store metrics read on scrape."""

    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "sdserver_http_requests",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sdserver_http_request_duration_seconds",
            "Time to answer a request, by route template.",
            ["route"],
            registry=self.registry,
        )
        self.registry.register(StoreCollector(engine))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class StoreCollector(Collector):
    """Queue depth, job counts and durations, workers and loaded models, read from the SQL store per scrape."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def describe(self) -> Iterable[Metric]:
        return []  # read on scrape only; describing would query the database at registration

    def collect(self) -> Iterable[Metric]:
        stats = read_stats(self._engine)
        queue = GaugeMetricFamily("sdserver_queue_jobs", "Jobs waiting or running, by status.", labels=["status"])
        for status in (JobStatus.QUEUED, JobStatus.RUNNING):
            queue.add_metric([status.value], stats.count(status))
        yield queue
        jobs = GaugeMetricFamily(
            "sdserver_jobs", "Jobs in the store by kind and status (terminal ones included).", labels=["kind", "status"]
        )
        for (kind, state), count in sorted(stats.jobs_by_kind_status.items()):
            jobs.add_metric([kind, state], count)
        yield jobs
        durations = SummaryMetricFamily(
            "sdserver_job_duration_seconds",
            "Run time of succeeded jobs (first claim to completion), by kind and model.",
            labels=["kind", "model"],
        )
        for total in stats.durations:
            durations.add_metric([total.kind, total.model_id], count_value=total.count, sum_value=total.seconds)
        yield durations
        loads = GaugeMetricFamily("sdserver_model_loads", "Model load jobs (load_model) by status.", labels=["status"])
        for status in JobStatus:
            loads.add_metric([status.value], stats.count(status, JobKind.MODEL_LOAD))
        yield loads
        yield GaugeMetricFamily(
            "sdserver_workers", "Live workers (heartbeat within a minute).", value=len(stats.workers)
        )
        held = GaugeMetricFamily(
            "sdserver_models_loaded", "Live workers holding each model in memory.", labels=["model"]
        )
        for model, count in stats.held_models().items():
            held.add_metric([model], count)
        yield held
        yield GaugeMetricFamily(
            "sdserver_queue_time_seconds",
            "Estimated wait before a job submitted now starts.",
            value=stats.queue_seconds,
        )


class RequestMetricsMiddleware:
    """Counts every HTTP request by its route template (`/api/v3/fetch/{job_id}`), not its raw path."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets if the app raises before starting a response
        started = time.perf_counter()

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            self.metrics.requests.labels(scope.get("method", ""), route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


def address_allowed(host: str | None, allowlist: Sequence[str]) -> bool:
    """Is the client's address inside one of the allow-listed IPs or networks?"""
    if not host or not allowlist:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    for entry in allowlist:
        try:
            if address in ipaddress.ip_network(entry.strip(), strict=False):
                return True
        except ValueError:
            log.warning("metrics_allowlist entry %r is not an IP address or network; ignored", entry)
    return False
