"""Settings, read once at the edges (CLI, app factory) and passed down."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import NonNegativeFloat
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_state_dir() -> Path:
    """Where the CLI keeps its saved credentials."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "agentruns"


# Seconds to wait before each retry of a webhook: about 25 h in all, then it fails.
DEFAULT_WEBHOOK_RETRY_SCHEDULE = (5, 30, 120, 600, 1800, 3600, 7200, *(10800,) * 7)


class Settings(BaseSettings):
    """Service settings; every field can be set as `AGENTRUNS_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="AGENTRUNS_", extra="ignore")

    database_url: str = "sqlite+aiosqlite:///./agentruns.db"
    default_model: str | None = None
    worker_concurrency: int = 32
    lease_seconds: float = 30.0
    poll_interval_s: float = 1.0
    max_attempts: int = 3
    shutdown_grace_s: float = 10.0
    # Scaling out (docs/deployment.md): dead-worker detection and the PostgreSQL pool.
    worker_dead_after_s: float = 10.0
    db_pool_size: int = 20
    db_max_overflow: int = 0
    db_pool_timeout_s: float = 10.0
    db_connect_timeout_s: float = 5.0
    max_body_bytes: int = 1024 * 1024
    auth_cache_s: float = 5.0
    delta_flush_interval_s: float = 0.005
    sse_heartbeat_s: float = 15.0
    state_dir: Path = default_state_dir()
    # Webhooks (docs/webhooks.md).
    webhook_allow_private: bool = False
    webhook_timeout_s: float = 10.0
    webhook_retry_schedule: list[NonNegativeFloat] = list(DEFAULT_WEBHOOK_RETRY_SCHEDULE)
    webhook_concurrency: int = 16
    # Server-side tools, MCP servers and bundles (docs/tools.md).
    config: Path | None = None
    tool_allow_private: bool = False
    tool_secrets: str = ""
    tool_output_max_chars: int = 20_000
    tool_response_max_bytes: int = 1024 * 1024
    fetch_timeout_s: float = 15.0
    mcp_allow_stdio: bool = False
    mcp_start_timeout_s: float = 30.0
    mcp_idle_timeout_s: float = 600.0

    def resolved_default_model(self) -> str:
        """The model agents use when they name none: a configured provider, else `test`."""
        if self.default_model:
            return self.default_model
        if os.environ.get("OPENAI_API_KEY"):
            return "openai:gpt-4.1-mini"
        if os.environ.get("ANTHROPIC_API_KEY"):
            return "anthropic:claude-sonnet-4-5"
        return "test"
