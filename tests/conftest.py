"""The suite's fixtures live in tests/fixtures/, by concern; shared helpers in tests/helpers.py.

The whole suite runs once on SQLite and once on a real PostgreSQL (TEST_DATABASES selects;
tests/fixtures/databases.py). With CI set, a server the suite needs that cannot start is a
failure, not a skip.

Tests that need processes besides pytest's (a server of the service, PostgreSQL or PgBouncer,
Redis, Better Auth, node) are marked `live`: here when they run on PostgreSQL or use a fixture
that starts a process, otherwise by their module or themselves. `make test-fast` runs the
others: the in-process suite, on SQLite.
"""

import pytest

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.pgbouncer",
    "tests.fixtures.redis",
    "tests.fixtures.databases",
    "tests.fixtures.app",
    "tests.fixtures.servers",
]

# Fixtures that start a process, or need one: their users are `live`.
LIVE_FIXTURES = frozenset(
    {
        "live_server",
        "redis_server",
        "better_auth",
        "postgres",
        "spare_postgres",
        "postgresql_database_url",
        "pgbouncer",
        "pgbouncer_database_url",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_sqlite = callspec is None or callspec.params.get("database_url", "sqlite") == "sqlite"
        if not on_sqlite or LIVE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.live)
