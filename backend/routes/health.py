"""Probes and metrics, for load balancers and scrapers: no token. Keep /metrics internal
(the public proxy should not route it)."""

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from backend.errors import ServiceUnavailable
from backend.schemas.error import ErrorBody
from backend.schemas.health import Alive, Ready
from backend.services import health

router = APIRouter(tags=["operations"])


@router.get(
    "/health",
    operation_id="getHealth",
    summary="Liveness: the process runs",
    response_model=Alive,
    status_code=200,
)
async def alive() -> Alive:
    return Alive(status="ok")


@router.get(
    "/ready",
    operation_id="getReadiness",
    summary="Readiness: the database answers and is migrated to this version",
    response_model=Ready,
    status_code=200,
    responses={
        503: {
            "model": ErrorBody,
            "description": "Not ready (SERVICE_UNAVAILABLE): `detail` says what failed — the "
            "database unreachable, or not at the expected migration revision",
        }
    },
)
async def ready(request: Request) -> Ready:
    problem = await health.unready_reason(request.app.state.db)
    if problem is not None:
        raise ServiceUnavailable(problem)
    return Ready(status="ready")


@router.get(
    "/metrics",
    operation_id="getMetrics",
    summary="Prometheus metrics: requests by route template and status, database pool",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    body = generate_latest(request.app.state.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
