"""Alembic environment: migrations run on the connection handed over by :func:`dispatch.store.sql.migrate`."""

from __future__ import annotations

from alembic import context

from dispatch.store.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - the CLI path always hands one over
    raise RuntimeError("run migrations through dispatch.store.sql.migrate()")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
