"""The app's life around serving: migrations and the start-up line before, the housekeeping
loop and a steadier garbage collector while, and everything `create_app` built closed after."""

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    asynccontextmanager,
    contextmanager,
    nullcontext,
    suppress,
)

from fastapi import FastAPI

from backend import db
from backend.services.housekeeping import housekeeping
from backend.web.cors import startup_line
from backend.web.state import AppState

logger = logging.getLogger("backend")


def lifespan(state: AppState) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def serving(app: FastAPI) -> AsyncIterator[None]:
        if state.settings.migrate_on_start:
            await db.migrate(state.settings)
        logger.info("%s", startup_line(state.settings))
        cleaner = asyncio.create_task(housekeeping(state.db), name="housekeeping")
        async with state.mcp.run() if state.mcp is not None else nullcontext():
            with steady_gc():
                yield
        cleaner.cancel()
        with suppress(asyncio.CancelledError):
            await cleaner
        await state.aclose()

    return serving


@contextmanager
def steady_gc() -> Iterator[None]:
    """While serving: what was built at start-up (modules, the app, SQLAlchemy's and pydantic's
    caches) is moved out of the cyclic collector's sight, and young objects are collected less
    often. A request allocates thousands of short-lived objects, and every collection of the
    older generations walked all of start-up's, a large share of a list request's time
    (bench/README.md). Undone at shutdown, so nothing frozen outlives the app."""
    threshold = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()
