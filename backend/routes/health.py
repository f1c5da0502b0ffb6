"""Probes and metrics, for load balancers and scrapers: no token. Keep /metrics internal
(the public proxy should not route it)."""

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from backend.errors import AppError, ServiceUnavailable
from backend.schemas.error import documented
from backend.schemas.health import Alive, Ready
from backend.services import health
from backend.web.state import app_state

router = APIRouter(
    tags=["operations"],
    responses={500: documented("An unexpected failure (nothing about it is shown)", AppError())},
)


@router.get(
    "/health",
    operation_id="getHealth",
    response_description="The process runs",
    summary="Liveness: the process runs",
    response_model=Alive,
    status_code=200,
)
async def alive() -> Alive:
    return Alive(status="ok")


@router.get(
    "/ready",
    operation_id="getReadiness",
    response_description="Ready to serve",
    summary="Readiness: the database answers and is migrated to this version",
    response_model=Ready,
    status_code=200,
    responses={
        503: documented(
            "Not ready: `detail` says what failed — the database unreachable, or not at the "
            "migration this version of the service expects",
            ServiceUnavailable("the database is unreachable: connection refused"),
        )
    },
)
async def ready(request: Request) -> Ready:
    problem = await health.unready_reason(app_state(request).db)
    if problem is not None:
        raise ServiceUnavailable(problem)
    return Ready(status="ready")


@router.get(
    "/metrics",
    operation_id="getMetrics",
    response_description="The metrics, in Prometheus' text format",
    summary="Prometheus metrics: requests by route template and status, database pool",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    body = generate_latest(app_state(request).metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
