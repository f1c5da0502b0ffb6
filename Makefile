# The two commands of the README: `make run` and `make test`. Everything they need is set up here.
UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
INTEROP := interop/better-auth
CLIENT := clients/typescript
EXAMPLE := examples/browser
GUIDE_APP := tests/frontend_docs
export UV_PYTHON_DOWNLOADS := never

.PHONY: help install interop client guide-deps example-deps example test-services run test test-fast lint format bench openapi
.DEFAULT_GOAL := help

help:
	@echo "make run       set up .venv from the lock file, migrate, serve http://$(HOST):$(PORT) (SQLite by default)"
	@echo "make test      what CI runs: set up (apt-get, npm ci), ruff, mypy, the whole suite on SQLite and PostgreSQL"
	@echo "make test-fast the inner loop: the in-process tests on SQLite (no server, no PostgreSQL)"
	@echo "make lint      ruff format --check, ruff check, mypy --strict"
	@echo "make format    ruff format and ruff check --fix"
	@echo "make openapi   rewrite openapi.json from the code"
	@echo "make bench     the performance table against shared/bench's limit server (about 30 minutes)"
	@echo "make install   only set up .venv"
	@echo "make example   the example page in a browser, against the API and a real Better Auth (examples/browser)"

$(UV):
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

# Bytecode compiled at install: otherwise each process (each worker of `taskapi serve
# --workers N`) compiles every module it imports when it starts, or again at every start where
# it cannot write __pycache__ (PYTHONDONTWRITEBYTECODE, a read-only image), which made workers
# start slower than uvicorn's health check allowed on a busy machine.
$(VENV)/.synced: pyproject.toml uv.lock Makefile | $(UV)
	$(UV) sync --frozen --compile-bytecode
	$(VENV)/bin/python -m compileall -q backend  # the project itself (installed editable: not by uv)
	touch $@

install: $(VENV)/.synced

# The real Better Auth server the interop tests run against (Node 20 + npm; npm's download
# cache is kept in .cache/npm so that repeated runs do not download again).
$(INTEROP)/node_modules/.installed: $(INTEROP)/package-lock.json
	cd $(INTEROP) && npm ci --no-audit --no-fund --loglevel=error --cache "$(CURDIR)/.cache/npm"
	touch $@

interop: $(INTEROP)/node_modules/.installed

# The TypeScript client's compiler, generator and openapi-fetch, for its tests (same npm cache).
$(CLIENT)/node_modules/.installed: $(CLIENT)/package-lock.json
	cd $(CLIENT) && npm ci --no-audit --no-fund --loglevel=error --cache "$(CURDIR)/.cache/npm"
	touch $@

client: $(CLIENT)/node_modules/.installed

# The packages of the Next.js app docs/frontend.md builds (better-auth, react…), for its test.
$(GUIDE_APP)/node_modules/.installed: $(GUIDE_APP)/package-lock.json
	cd $(GUIDE_APP) && npm ci --no-audit --no-fund --loglevel=error --cache "$(CURDIR)/.cache/npm"
	touch $@

guide-deps: $(GUIDE_APP)/node_modules/.installed

# The example page's Better Auth client, bundler and compiler (same npm cache); it links the client.
$(EXAMPLE)/node_modules/.installed: $(EXAMPLE)/package-lock.json
	cd $(EXAMPLE) && npm ci --no-audit --no-fund --loglevel=error --cache "$(CURDIR)/.cache/npm"
	touch $@

example-deps: $(EXAMPLE)/node_modules/.installed

# The page on http://127.0.0.1:5173, Better Auth on :3000, the API on :8000 (Ctrl-C stops all three).
example: install interop client example-deps
	cd $(EXAMPLE) && npm run --silent build
	$(VENV)/bin/python $(EXAMPLE)/serve.py

# The servers the suite runs for real: PostgreSQL 15, PgBouncer and Redis, and the browser of the
# browser test: Chromium (Debian's packages, never a browser download), installed when missing
# (as root, as on CI; elsewhere install them yourself or run with sudo).
PG_INITDB := /usr/lib/postgresql/15/bin/initdb
PGBOUNCER := /usr/sbin/pgbouncer
REDIS_SERVER := /usr/bin/redis-server
CHROMIUM := /usr/bin/chromium
CHROMEDRIVER := /usr/bin/chromedriver
test-services:
	@missing=""; \
	[ -x $(PG_INITDB) ] || missing="$$missing postgresql-15"; \
	[ -x $(PGBOUNCER) ] || missing="$$missing pgbouncer"; \
	[ -x $(REDIS_SERVER) ] || missing="$$missing redis-server"; \
	[ -x $(CHROMIUM) ] || missing="$$missing chromium"; \
	[ -x $(CHROMEDRIVER) ] || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
		echo "# installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# make run HOST=0.0.0.0 PORT=8100
HOST ?= 127.0.0.1
PORT ?= 8000

run: install
	$(VENV)/bin/taskapi serve --host $(HOST) --port $(PORT)

lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint interop client guide-deps example-deps test-services
	$(VENV)/bin/pytest

# The inner loop: every test that runs in this process on SQLite. Left out: those marked `live`
# (they start servers of the service, PostgreSQL, PgBouncer, Redis, Better Auth or node) and
# `slow` (thousands of requests by design); `make test` runs them all.
test-fast: install
	TEST_DATABASES=sqlite $(VENV)/bin/pytest -q -m "not live and not slow"

# The OpenAPI document at the repository root, as the app serves it (the tests compare the two).
openapi: install
	$(VENV)/bin/taskapi openapi --output openapi.json

# The service against shared/bench's limit on SQLite, PostgreSQL and PostgreSQL through PgBouncer,
# small and 1,000,000-task data sets (about 30 minutes; QUICK=1 for a try-out; see bench/README.md).
bench: install
	bench/table.sh
