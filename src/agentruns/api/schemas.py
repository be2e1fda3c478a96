"""Request bodies of the HTTP contract (API.md). Unknown fields are refused, by name."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_TIMEOUT_S = 7 * 24 * 3600


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_url(value: str | None) -> str | None:
    if value is not None and not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return value


class AgentFields(Strict):
    """Every field of an agent; all optional so that PATCH can reuse the checks."""

    name: str | None = Field(None, min_length=1, max_length=200)
    instructions: str | None = None
    prompt: str | None = None
    model: str | None = Field(None, max_length=200)
    model_settings: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    bundle: str | None = Field(None, min_length=1, max_length=200)
    vars: dict[str, Any] | None = None
    max_steps: int | None = Field(None, ge=1, le=1000)
    timeout_s: float | None = Field(None, gt=0, le=MAX_TIMEOUT_S)
    tool_response_timeout_s: float | None = Field(None, gt=0, le=MAX_TIMEOUT_S)
    output_schema: dict[str, Any] | None = None
    callback_url: str | None = None
    metadata: dict[str, Any] | None = None

    _url = field_validator("callback_url")(_check_url)


class AgentCreate(AgentFields):
    name: str = Field(min_length=1, max_length=200)

    def spec(self) -> dict[str, Any]:
        """The stored spec, with defaults filled in."""
        return {
            "name": self.name,
            "instructions": self.instructions or "",
            "prompt": self.prompt,
            "model": self.model,
            "model_settings": self.model_settings or {},
            "tools": self.tools or [],
            "bundle": self.bundle,
            "vars": self.vars or {},
            "max_steps": self.max_steps or 20,
            "timeout_s": self.timeout_s or 600,
            "tool_response_timeout_s": self.tool_response_timeout_s or 24 * 3600,
            "output_schema": self.output_schema,
            "callback_url": self.callback_url,
            "metadata": self.metadata or {},
        }


class AgentUpdate(AgentFields):
    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


class AgentPublish(Strict):
    version: int | None = Field(None, ge=1)


class RunCreate(Strict):
    chat_id: str | None = None
    agent_id: str | None = None
    vars: dict[str, Any] = Field(default_factory=dict)
    message: str | None = Field(None, min_length=1)
    callback_url: str | None = None
    bundle: str | None = Field(None, min_length=1, max_length=200)
    environment: Literal["playground", "production"] = "playground"
    metadata: dict[str, Any] = Field(default_factory=dict)
    tool_response_timeout_s: float | None = Field(None, gt=0, le=MAX_TIMEOUT_S)

    _url = field_validator("callback_url")(_check_url)

    @model_validator(mode="after")
    def _one_agent(self) -> RunCreate:
        if not (self.chat_id or self.agent_id):
            raise ValueError("give chat_id or agent_id")
        if self.chat_id and self.agent_id and self.chat_id != self.agent_id:
            raise ValueError("chat_id and agent_id name different agents")
        return self

    @property
    def target_agent(self) -> str:
        return self.agent_id or self.chat_id or ""


class RunContinue(Strict):
    message: str = Field(min_length=1)


class ToolResponse(Strict):
    tool_call_id: str = Field(min_length=1)
    output: str


class ToolResponses(Strict):
    tool_responses: list[ToolResponse] = Field(min_length=1)

    @field_validator("tool_responses")
    @classmethod
    def _unique_ids(cls, responses: list[ToolResponse]) -> list[ToolResponse]:
        ids = [r.tool_call_id for r in responses]
        if len(ids) != len(set(ids)):
            raise ValueError("each tool_call_id may appear once per request")
        return responses


class ToolCallClaim(Strict):
    """`POST .../tool-calls/{id}/claim`: who runs the call's handler, and for how long."""

    claimant: str = Field(min_length=1, max_length=100)
    lease_s: float = Field(60, ge=1, le=3600)


class ToolDefinitionIn(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    namespace: str = Field("default", pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    description: str = Field("", max_length=10_000)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolRegistration(Strict):
    tools: list[ToolDefinitionIn] = Field(min_length=1, max_length=500)


BUNDLE_NAME = r"^[A-Za-z0-9_.-]{1,100}$"


class BundleBody(Strict):
    """`PUT /v1/bundles/{name}`: the name comes from the path (repeating it is allowed)."""

    name: str | None = Field(None, pattern=BUNDLE_NAME)
    description: str = Field("", max_length=10_000)
    tools: list[dict[str, Any]] = Field(default_factory=list, max_length=200)


class BundleCreate(BundleBody):
    name: str = Field(pattern=BUNDLE_NAME)
