"""bundles; a run's bundle may be none

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bundles",
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column(
            "tools",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", sa.Float(precision=53), nullable=False),
        sa.Column("updated_at", sa.Float(precision=53), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_bundles_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("project_id", "name", name=op.f("pk_bundles")),
    )
    # Agents offer a bundle's tools only when they name one; a run without one stores NULL.
    with op.batch_alter_table("runs") as batch:
        batch.alter_column("bundle", existing_type=sa.String(length=200), nullable=True)


def downgrade() -> None:
    op.execute("UPDATE runs SET bundle = 'default' WHERE bundle IS NULL")
    with op.batch_alter_table("runs") as batch:
        batch.alter_column("bundle", existing_type=sa.String(length=200), nullable=False)
    op.drop_table("bundles")
