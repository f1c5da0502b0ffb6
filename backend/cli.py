"""`taskapi serve | migrate | token | openapi` — run the service, migrate its database, mint a test
token, write the OpenAPI document."""

import argparse
import asyncio
import json
import logging.config
import os
import re
import signal
import sys
import time
from types import FrameType
from typing import Any

import jwt
import uvicorn

from backend import db, server
from backend.config import (
    Settings,
    development_secret_file,
    from_environment,
    with_development_secret,
)
from backend.logs import logging_config

_TTL = re.compile(r"^(\d+)([smhd]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# On SIGTERM, requests in flight get this long to finish; open event streams, which never
# finish by themselves, are then closed (their clients reconnect with Last-Event-ID).
GRACEFUL_SHUTDOWN_SECONDS = 10
APP = "backend.main:app"


def _ttl(text: str) -> int:
    match = _TTL.match(text.strip().lower())
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError("a duration such as 3600, 90s, 15m, 1h or 7d")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _migrate(settings: Settings) -> None:
    """Migrate, or end the process with one line that says what is wrong with the database
    (unreachable, login or TLS refused, a URL of another kind) instead of a traceback."""
    try:
        asyncio.run(db.migrate(settings))
    except Exception as exc:
        problem = db.describe_failure(exc, settings)
        if problem is None:
            raise  # not the database's answer: a bug, shown in full
        sys.exit(f"taskapi: {problem}")


def _serve(settings: Settings, args: argparse.Namespace) -> None:
    if settings.migrate_on_start:
        _migrate(settings)
    else:
        try:  # the workers would each fail on it with a traceback
            db.check_urls(settings)
        except db.DatabaseURLError as exc:
            sys.exit(f"taskapi: {exc}")
    # Migrated once here; the workers need not race for it.
    os.environ["MIGRATE_ON_START"] = "false"
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again with the handler it
    # found: with the default one the process would end "killed by SIGTERM" (exit status 143)
    # after a clean shutdown. Exiting 0 says it stopped as asked (before uvicorn takes the
    # signal over, it simply ends the process, as the default would).
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "workers": args.workers,
        "loop": "uvloop",
        "http": server.http_protocol(head_timeout=settings.http_header_timeout),
        "proxy_headers": args.proxy_headers,
        "log_level": settings.log_level.lower(),
        # Each worker configures logging as this process did; our access line (route
        # templates, request ids) replaces uvicorn's, which prints raw paths.
        "log_config": logging_config(settings),
        "access_log": False,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
        "timeout_worker_healthcheck": settings.worker_healthcheck_timeout,
    }
    if args.workers > 1:
        # What uvicorn.run does for several workers, with a supervisor that lets go of the
        # listening socket as soon as it is told to stop (server.Supervisor).
        config = uvicorn.Config(APP, **options)
        listener = config.bind_socket()
        try:
            server.Supervisor(config, sockets=[listener]).run()
        finally:
            listener.close()
    else:
        uvicorn.run(APP, **options)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _token(settings: Settings, args: argparse.Namespace) -> None:
    development = development_secret_file(settings)
    if development is not None:
        # Made by the service where it runs (its data folder); one made here, by another
        # folder's command, would sign tokens that service refuses.
        if not development.exists():
            sys.exit(
                f"taskapi: no development secret in {development}: the service makes it when it "
                "first starts; run `taskapi token` in the folder the service runs in (or with "
                "DATA_DIR set to its data folder), or set BETTER_AUTH_SECRET to the service's"
            )
        settings = with_development_secret(settings)
        print(f"taskapi: signed with the development secret in {development}", file=sys.stderr)
    if settings.hs256_secret is None:
        sys.exit("taskapi: no BETTER_AUTH_SECRET is configured, so HS256 tokens are not accepted")
    now = int(time.time())
    claims: dict[str, object] = {"sub": args.sub, "iat": now, "exp": now + args.ttl}
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if args.mcp:
        if settings.mcp_audience is None:
            sys.exit("taskapi: --mcp needs MCP_AUDIENCE, the public URL of the MCP server (/mcp)")
        claims["aud"] = settings.mcp_audience
    print(jwt.encode(claims, settings.hs256_secret, algorithm="HS256"))


def _openapi(output: str) -> None:
    from backend.main import create_app  # the app is built only for this command

    # The document depends on no setting: any secret will do, and none is written anywhere.
    settings = Settings(better_auth_secret="openapi-export-" + "x" * 32, cors_origins=[])
    document = json.dumps(create_app(settings).openapi(), indent=2, ensure_ascii=False) + "\n"
    if output == "-":
        sys.stdout.write(document)
    else:
        with open(output, "w", encoding="utf-8") as file:
            file.write(document)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="taskapi", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="migrate, then serve the API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument(
        "--proxy-headers", action="store_true", help="trust X-Forwarded-* (behind a proxy)"
    )
    commands.add_parser("migrate", help="apply pending database migrations")
    token = commands.add_parser("token", help="print an HS256 token signed with the secret")
    token.add_argument("--sub", required=True, help="the user id")
    token.add_argument("--ttl", type=_ttl, default=3600, help="lifetime: 3600, 15m, 1h, 7d")
    token.add_argument(
        "--mcp", action="store_true", help="for the MCP server: its aud is MCP_AUDIENCE"
    )
    openapi = commands.add_parser("openapi", help="write the OpenAPI document (JSON)")
    openapi.add_argument("--output", default="openapi.json", help="a file, or - for stdout")
    args = parser.parse_args(argv)

    if args.command == "openapi":
        _openapi(args.output)
        return
    settings = from_environment()
    logging.config.dictConfig(logging_config(settings))
    if args.command == "serve":
        _serve(settings, args)
    elif args.command == "migrate":
        _migrate(settings)
        print("taskapi: database is at the latest migration", file=sys.stderr)
    else:
        _token(settings, args)


if __name__ == "__main__":
    main()
