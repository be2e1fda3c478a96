"""`/v1/tools`: the tool registry. Registering a name again makes a new version."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request

from agentruns.api.auth import current_project
from agentruns.api.errors import APIError
from agentruns.api.responses import JSONResponse, envelope, list_envelope
from agentruns.api.schemas import ToolDefinitionIn, ToolRegistration
from agentruns.engine.tools.arguments import check_schema
from agentruns.store import tool_registry

router = APIRouter(prefix="/v1/tools", tags=["tools"])


@router.post("")
async def register_tools(
    request: Request,
    body: ToolRegistration | ToolDefinitionIn = Body(...),
    project: str = Depends(current_project),
) -> JSONResponse:
    """Register one definition, or several as `{"tools": [...]}`; answers the stored list."""
    definitions = body.tools if isinstance(body, ToolRegistration) else [body]
    for index, definition in enumerate(definitions):
        try:
            check_schema(definition.parameters)
        except ValueError as exc:
            field = f"tools[{index}].parameters"
            raise APIError(
                422, f"{field}: {exc}", details=[{"field": field, "message": str(exc)}]
            ) from exc
    stored = await tool_registry.register_tools(
        request.app.state.db, project, [d.model_dump() for d in definitions]
    )
    return envelope(stored)


@router.get("")
async def list_tools(
    request: Request,
    project: str = Depends(current_project),
    namespace: str | None = Query(None, max_length=100),
) -> JSONResponse:
    tools: list[dict[str, Any]] = await tool_registry.list_tools(
        request.app.state.db, project, namespace
    )
    return list_envelope(tools, None)
