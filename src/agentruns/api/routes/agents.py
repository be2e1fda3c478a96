"""`/v1/agents`: create, read, list, update (a new version each time), delete, publish."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from agentruns.api.auth import current_project
from agentruns.api.errors import APIError, not_found
from agentruns.api.responses import JSONResponse, envelope, list_envelope
from agentruns.api.routes.bundles import check_bundle_exists, check_tool_specs
from agentruns.api.schemas import AgentCreate, AgentPublish, AgentUpdate
from agentruns.engine.models import validate_model_spec
from agentruns.engine.tools import tool_refs
from agentruns.store import agents, tool_registry

router = APIRouter(prefix="/v1/agents", tags=["agents"])


async def _check_refs(request: Request, project: str, fields: dict[str, Any]) -> None:
    """A `ref` to a tool that is not registered is refused when the agent is saved."""
    refs = tool_refs(fields.get("tools") or [])
    found = await tool_registry.find_tools(request.app.state.db, project, refs)
    missing = sorted(f"{ns}/{name}" for ns, name in refs - found.keys())
    if missing:
        message = (
            f"tools: no registered tool {', '.join(missing)} (register it with POST /v1/tools)"
        )
        raise APIError(422, message, details=[{"field": "tools", "message": message}])


async def _check_spec(request: Request, project: str, fields: dict[str, Any]) -> None:
    """Refuse what a worker could not run, at save time rather than at run time."""
    try:
        if fields.get("model"):
            validate_model_spec(fields["model"])
    except ValueError as exc:
        raise APIError(
            422, f"model: {exc}", details=[{"field": "model", "message": str(exc)}]
        ) from exc
    await check_tool_specs(request, fields.get("tools") or [])
    await check_bundle_exists(request, project, fields.get("bundle"))


@router.post("", status_code=201)
async def create_agent(
    body: AgentCreate, request: Request, project: str = Depends(current_project)
) -> JSONResponse:
    spec = body.spec()
    await _check_spec(request, project, spec)
    await _check_refs(request, project, spec)
    return envelope(await agents.create_agent(request.app.state.db, project, spec), 201)


@router.get("")
async def list_agents(
    request: Request,
    project: str = Depends(current_project),
    limit: int = Query(20, ge=1, le=100),
    after: str | None = None,
) -> JSONResponse:
    try:
        items, cursor = await agents.list_agents(
            request.app.state.db, project, limit=limit, after=after
        )
    except LookupError as exc:
        raise APIError(422, f"after: unknown cursor {after!r}") from exc
    return list_envelope(items, cursor)


@router.get("/{agent_id}")
async def get_agent(
    agent_id: str,
    request: Request,
    project: str = Depends(current_project),
    version: int | None = Query(None, ge=1),
) -> JSONResponse:
    agent = await agents.get_agent(request.app.state.db, project, agent_id, version=version)
    if agent is None:
        raise not_found("agent", agent_id if version is None else f"{agent_id} version {version}")
    return envelope(agent)


@router.patch("/{agent_id}")
async def update_agent(
    agent_id: str, body: AgentUpdate, request: Request, project: str = Depends(current_project)
) -> JSONResponse:
    changes = body.changes()
    if changes.get("name", "") is None:
        raise APIError(422, "name: cannot be null", details=[{"field": "name", "message": "null"}])
    await _check_spec(request, project, changes)
    await _check_refs(request, project, changes)
    agent = await agents.update_agent(request.app.state.db, project, agent_id, changes)
    if agent is None:
        raise not_found("agent", agent_id)
    return envelope(agent)


@router.delete("/{agent_id}")
async def delete_agent(
    agent_id: str, request: Request, project: str = Depends(current_project)
) -> JSONResponse:
    if not await agents.delete_agent(request.app.state.db, project, agent_id):
        raise not_found("agent", agent_id)
    return envelope({"id": agent_id, "deleted": True})


@router.post("/{agent_id}/publish")
async def publish_agent(
    agent_id: str,
    request: Request,
    body: AgentPublish | None = None,
    project: str = Depends(current_project),
) -> JSONResponse:
    try:
        agent = await agents.publish_agent(
            request.app.state.db, project, agent_id, body.version if body else None
        )
    except ValueError as exc:
        raise APIError(422, f"version: {exc}") from exc
    if agent is None:
        raise not_found("agent", agent_id)
    return envelope(agent)
