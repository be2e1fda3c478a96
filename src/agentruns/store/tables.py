"""The schema: every durable fact of agentruns, as SQLAlchemy Core tables.

Times are stored as Unix seconds (double precision) so that lease arithmetic
and ordering are the same on SQLite and PostgreSQL; the API renders them as
ISO 8601.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

JSON = sa.JSON().with_variant(JSONB(), "postgresql")
Time = sa.Float(precision=53)

projects = sa.Table(
    "projects",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("created_at", Time, nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("project_id", sa.String(36), sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("prefix", sa.String(32), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("revoked_at", Time),
)

agents = sa.Table(
    "agents",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("project_id", sa.String(36), sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("latest_version", sa.Integer, nullable=False),
    sa.Column("published_version", sa.Integer),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("updated_at", Time, nullable=False),
    sa.Column("deleted_at", Time),
    sa.Index("ix_agents_project_created", "project_id", "created_at"),
)

agent_versions = sa.Table(
    "agent_versions",
    metadata,
    sa.Column("agent_id", sa.String(36), sa.ForeignKey("agents.id"), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("spec", JSON, nullable=False),
    sa.Column("created_at", Time, nullable=False),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("project_id", sa.String(36), sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("agent_id", sa.String(36), sa.ForeignKey("agents.id"), nullable=False),
    sa.Column("agent_version", sa.Integer, nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("vars", JSON, nullable=False),
    sa.Column("results", JSON, nullable=False),
    sa.Column("last_agent_message", sa.Text),
    sa.Column("pending_tool_calls", JSON, nullable=False),
    sa.Column("callback_url", sa.Text),
    sa.Column("bundle", sa.String(200)),  # None: the agent's own tools only
    sa.Column("environment", sa.String(32), nullable=False),
    sa.Column("usage", JSON, nullable=False),
    sa.Column("error", JSON),
    sa.Column("metadata", JSON, nullable=False),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("updated_at", Time, nullable=False),
    sa.Column("started_at", Time),
    sa.Column("completed_at", Time),
    # The queue: what a worker needs to claim, lease and fence the run.
    sa.Column("queued_at", Time),
    sa.Column("worker_id", sa.String(64)),
    sa.Column("lease_until", Time),
    sa.Column("lease_token", sa.String(36)),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    # Limits of the current turn (a turn starts at create or continue).
    sa.Column("timeout_s", sa.Float, nullable=False),
    sa.Column("turn_steps", sa.Integer, nullable=False, server_default="0"),
    sa.Column("turn_deadline", Time),
    sa.Column("tool_response_deadline", Time),
    # The run's own pause deadline, when it set one (else the agent's).
    sa.Column("tool_response_timeout_s", sa.Float),
    # The last event sequence number; events get gap-free numbers under this row's lock.
    sa.Column("event_seq", sa.Integer, nullable=False, server_default="0"),
    sa.Index("ix_runs_project_created", "project_id", "created_at", "id"),
    sa.Index("ix_runs_status_queued", "status", "queued_at"),
    sa.Index("ix_runs_status_lease", "status", "lease_until"),
)

run_messages = sa.Table(
    "run_messages",
    metadata,
    sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("format_version", sa.Integer, nullable=False),
    sa.Column("message", JSON, nullable=False),
    sa.Column("created_at", Time, nullable=False),
)

run_events = sa.Table(
    "run_events",
    metadata,
    sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("data", JSON, nullable=False),
    sa.Column("created_at", Time, nullable=False),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("project_id", sa.String(36), sa.ForeignKey("projects.id"), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.id"), nullable=False),
    sa.Column("created_at", Time, nullable=False),
)

tool_definitions = sa.Table(
    "tool_definitions",
    metadata,
    sa.Column("project_id", sa.String(36), sa.ForeignKey("projects.id"), primary_key=True),
    sa.Column("namespace", sa.String(100), primary_key=True),
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("parameters", JSON, nullable=False),
    sa.Column("created_at", Time, nullable=False),
)

# Webhooks: each project's signing secret (the previous one stays valid for a while
# after a rotation), and the outbox of deliveries with one row per attempt.
webhook_secrets = sa.Table(
    "webhook_secrets",
    metadata,
    sa.Column("project_id", sa.String(36), sa.ForeignKey("projects.id"), primary_key=True),
    sa.Column("secret", sa.String(100), nullable=False),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("previous_secret", sa.String(100)),
    sa.Column("previous_expires_at", Time),
)

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    # The id is also the `webhook-id` header: stable across retries and redeliveries.
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("project_id", sa.String(36), sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.id"), nullable=False),
    sa.Column("event_type", sa.String(64), nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("payload", JSON, nullable=False),
    # pending → sending → delivered | failed (| pending again on retry or redeliver)
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    # Attempts made before the current retry series (a redelivery starts a new one).
    sa.Column("series_start", sa.Integer, nullable=False, server_default="0"),
    # When a dispatcher should take it next: the retry time while pending, the lease
    # expiry while sending, NULL once finished. The claim looks only at this column.
    sa.Column("next_attempt_at", Time),
    sa.Column("lease_token", sa.String(36)),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("updated_at", Time, nullable=False),
    sa.Column("finished_at", Time),
    # The worker whose dispatcher holds the attempt in flight (see `workers` below).
    sa.Column("worker_id", sa.String(64)),
    sa.Index("ix_webhook_deliveries_next_attempt", "next_attempt_at"),
    sa.Index("ix_webhook_deliveries_run", "run_id", "created_at"),
)

webhook_attempts = sa.Table(
    "webhook_attempts",
    metadata,
    sa.Column(
        "delivery_id", sa.String(36), sa.ForeignKey("webhook_deliveries.id"), primary_key=True
    ),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("started_at", Time, nullable=False),
    sa.Column("finished_at", Time, nullable=False),
    sa.Column("status_code", sa.Integer),
    sa.Column("error", sa.Text),
    sa.Column("next_attempt_at", Time),
)

bundles = sa.Table(
    "bundles",
    metadata,
    sa.Column("project_id", sa.String(36), sa.ForeignKey("projects.id"), primary_key=True),
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("tools", JSON, nullable=False),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("updated_at", Time, nullable=False),
)

# Every live `serve` and `worker` process, heartbeating. A row whose heartbeat is older than
# AGENTRUNS_WORKER_DEAD_AFTER_S belongs to a dead process: what it held is handed back.
workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("hostname", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", Time, nullable=False),
    sa.Column("heartbeat_at", Time, nullable=False),
)
