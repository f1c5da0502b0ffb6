"""Prometheus metrics, one registry per app (so that apps built side by side, as in the tests,
count apart): requests and their latency by method, route template and status, and the
database pool, read whenever /metrics is scraped.

Every label has a bounded set of values: the route is a template of this app or `<unmatched>`,
the method one of the HTTP methods the app knows or `OTHER`, and the status a number."""

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from backend.db import Database

UNMATCHED = "<unmatched>"
METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class PoolCollector(Collector):
    def __init__(self, database: Database) -> None:
        self.database = database

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "db_pool_connections_in_use",
            "Database connections serving a request now",
            value=float(self.database.in_use),
        )
        pool = self.database.engine.pool
        values = {
            "db_pool_size": ("Connections the pool keeps open", "size"),
            "db_pool_overflow": (
                "Connections open beyond the pool size (negative: not yet opened)",
                "overflow",
            ),
        }
        for name, (documentation, method) in values.items():
            read = getattr(pool, method, None)
            if callable(read):  # a QueuePool has them all; another kind reports nothing
                yield GaugeMetricFamily(name, documentation, value=float(read()))


class Metrics:
    def __init__(self, database: Database) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("method", "route", "status")
        self.requests = Counter(
            "http_requests", "HTTP requests answered", labels, registry=self.registry
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time from the request's arrival to the end of its response",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tool_calls = Counter(
            "mcp_tool_calls",
            "MCP tool calls, by tool and outcome (ok, error, unavailable)",
            ("tool", "outcome"),
            registry=self.registry,
        )
        self.tool_latency = Histogram(
            "mcp_tool_duration_seconds",
            "Time an MCP tool call took",
            ("tool",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(PoolCollector(database))

    def observe_tool(self, tool: str, outcome: str, seconds: float) -> None:
        """An MCP tool call (the tools are the server's own: a bounded set of names)."""
        self.tool_calls.labels(tool=tool, outcome=outcome).inc()
        self.tool_latency.labels(tool=tool).observe(seconds)

    def observe(self, *, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "OTHER"
        labels = {"method": method, "route": route, "status": str(status)}
        self.requests.labels(**labels).inc()
        self.latency.labels(**labels).observe(seconds)
