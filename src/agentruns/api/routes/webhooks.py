"""Webhooks: the project's signing secret, and each run's deliveries with their attempts."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from agentruns.api.auth import current_project
from agentruns.api.errors import APIError, not_found
from agentruns.api.responses import JSONResponse, envelope, list_envelope
from agentruns.store import webhooks

router = APIRouter(prefix="/v1", tags=["webhooks"])


@router.get("/webhook-secret")
async def get_webhook_secret(
    request: Request, project: str = Depends(current_project)
) -> JSONResponse:
    """The `whsec_` secret that signs this project's webhooks (created on first use)."""
    return envelope(await webhooks.get_secret(request.app.state.db, project))


@router.post("/webhook-secret/rotate")
async def rotate_webhook_secret(
    request: Request, project: str = Depends(current_project)
) -> JSONResponse:
    """A new secret; for 24 h webhooks carry signatures by both the new and the old one."""
    return envelope(await webhooks.rotate_secret(request.app.state.db, project))


@router.get("/agent-runs/{run_id}/webhook-deliveries")
async def list_webhook_deliveries(
    run_id: str, request: Request, project: str = Depends(current_project)
) -> JSONResponse:
    """Every webhook of the run, oldest first, each with all its attempts."""
    items = await webhooks.list_run_deliveries(request.app.state.db, project, run_id)
    if items is None:
        raise not_found("run", run_id)
    return list_envelope(items, None)


@router.post("/webhook-deliveries/{delivery_id}/redeliver")
async def redeliver_webhook(
    delivery_id: str, request: Request, project: str = Depends(current_project)
) -> JSONResponse:
    """Send the delivery again now, same `webhook-id` and payload, with fresh retries."""
    try:
        delivery = await webhooks.redeliver(request.app.state.db, project, delivery_id)
    except webhooks.StateConflict as exc:
        raise APIError(409, str(exc)) from exc
    if delivery is None:
        raise not_found("webhook delivery", delivery_id)
    return envelope(delivery)
