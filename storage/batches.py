"""Bookkeeping of batch runs: which images a batch holds, and which run (if any) each one has.

An item is keyed by what determines its result, the image's content hash and the run configuration,
so running a batch again finds every item it already started, whatever the batch was called or where
the manifest lives. Its tables are in `arpo.storage.models` with the
others, so opening any history creates them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Engine, select
from sqlalchemy.orm import sessionmaker

from arpo.storage.models import BatchItemRow, BatchRow, Run

BATCH_ITEM_STATUSES = ("pending", "running", "finished", "failed")


class BatchItemState(BaseModel):
    """What the database knows about one item."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    key: str
    batch_id: str
    image: str
    run_id: str | None
    status: str
    error: str | None
    updated_at: datetime


class BatchStore:
    """Reads and writes batch rows; every method is one short committed transaction (thread-safe)."""

    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def ensure_batch(self, batch_id: str, source: str, config: dict[str, Any], item_count: int) -> None:
        """Create the batch row, or refresh its item count when the batch is run again."""
        with self._sessions.begin() as session:
            row = session.get(BatchRow, batch_id)
            if row is None:
                session.add(BatchRow(id=batch_id, source=source, config=config, item_count=item_count))
            else:
                row.item_count = item_count

    def item(self, key: str) -> BatchItemState | None:
        """The stored state of an item, or None when no batch has seen it yet."""
        with self._sessions() as session:
            row = session.get(BatchItemRow, key)
            return BatchItemState.model_validate(row) if row is not None else None

    def record(
        self,
        key: str,
        *,
        batch_id: str,
        image: str,
        status: str,
        run_id: str | None = None,
        error: str | None = None,
    ) -> None:
        """Write an item's status (and run, and error); a run id once set is kept unless replaced."""
        if status not in BATCH_ITEM_STATUSES:
            raise ValueError(f"unknown batch item status {status!r}; expected one of {', '.join(BATCH_ITEM_STATUSES)}")
        with self._sessions.begin() as session:
            row = session.get(BatchItemRow, key)
            if row is None:
                row = BatchItemRow(key=key, batch_id=batch_id, image=image)
                session.add(row)
            row.batch_id, row.image, row.status, row.error = batch_id, image, status, error
            if run_id is not None:
                row.run_id = run_id

    def unclaimed_runs(self, image: str, since: datetime) -> list[tuple[str, dict[str, Any]]]:
        """Batch runs for `image` opened at or after `since` that no item points to, oldest first, with
        their configs: what a kill between opening an item's run and recording it leaves behind."""
        claimed = select(BatchItemRow.run_id).where(BatchItemRow.run_id.is_not(None))
        query = (
            select(Run.id, Run.config)
            .where(Run.kind == "batch", Run.reference_name == image, Run.created_at >= since, Run.id.not_in(claimed))
            .order_by(Run.created_at)
        )
        with self._sessions() as session:
            return [(run_id, config or {}) for run_id, config in session.execute(query)]

    def items_of(self, batch_id: str) -> list[BatchItemState]:
        """Every item last run as part of a batch, in image order."""
        with self._sessions() as session:
            rows = session.scalars(
                select(BatchItemRow).where(BatchItemRow.batch_id == batch_id).order_by(BatchItemRow.image)
            )
            return [BatchItemState.model_validate(row) for row in rows]

