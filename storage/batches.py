"""Bookkeeping of batch runs: which images a batch holds, and which run (if any) each one has.

An item is keyed by what determines its result, the image's content hash and the run configuration,
so running a batch again finds every item it already started, whatever the batch was called or where
the manifest lives. Its tables are in `arpo.storage.models` with the others.

The items are also a queue in the database, so that workers in any number of threads, processes or
machines (a Ray cluster) share one batch: a worker claims the next item in one UPDATE (PostgreSQL skips
rows another worker is claiming), keeps its claim alive with heartbeats while it runs it, and hands it
back when it ends. A claim whose heartbeat is older than the lease belongs to a worker that died, and
the next worker to ask takes the item over (its run resumes from its last checkpoint).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import ColumnElement, Engine, and_, exists, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from arpo.storage.models import BatchItemRow, BatchRow, Run, utc_now

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
    claimed_by: str | None = None


class BatchStore:
    """Reads and writes batch rows; every method is one short committed transaction (thread-safe)."""

    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def ensure_batch(self, batch_id: str, source: str, config: dict[str, Any], item_count: int) -> None:
        """Create the batch row, or refresh its item count when the batch is run again (by this process
        or another one at the same moment: whichever inserts first, the other finds the row)."""
        with self._sessions.begin() as session:
            _insert_missing(session, BatchRow, [{"id": batch_id, "source": source, "config": config, "item_count": item_count}])
            session.execute(update(BatchRow).where(BatchRow.id == batch_id).values(item_count=item_count))

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
            if status != "running":
                row.claimed_by = row.heartbeat_at = None

    # The queue

    def enqueue(self, batch_id: str, items: Iterable[tuple[str, str]]) -> None:
        """Make sure each (key, image) has a row: new ones wait as pending and failed ones are queued
        again (a new batch run retries them); finished and running items stay as they are."""
        items = list(items)
        with self._sessions.begin() as session:
            _insert_missing(session, BatchItemRow, [
                {"key": key, "batch_id": batch_id, "image": image, "status": "pending", "updated_at": utc_now()}
                for key, image in items
            ])
            for key, image in items:
                session.execute(
                    update(BatchItemRow).where(BatchItemRow.key == key, BatchItemRow.status == "failed")
                    .values(batch_id=batch_id, image=image, status="pending")
                )

    def claim_next(self, keys: Sequence[str], worker: str, lease_s: float) -> BatchItemState | None:
        """Give `worker` the next item among `keys` that waits (or whose worker's lease ran out), or None.

        One UPDATE decides, so two workers never hold the same item; on PostgreSQL the pick skips
        rows another worker is claiming at this moment instead of waiting for them.
        """
        for _ in range(8):  # a race lost to another worker: pick again
            now = utc_now()
            claimable = _claimable(keys, stale_before=now - timedelta(seconds=lease_s))
            pick = (
                select(BatchItemRow.key).where(claimable).order_by(BatchItemRow.image, BatchItemRow.key)
                .limit(1).with_for_update(skip_locked=True).scalar_subquery()
            )
            claim = (
                update(BatchItemRow).where(BatchItemRow.key == pick, claimable)
                # updated_at keeps the time of the last status a worker wrote: finding the run a
                # killed worker opened but never recorded looks for runs made since then.
                .values(status="running", claimed_by=worker, heartbeat_at=now, error=None, updated_at=BatchItemRow.updated_at)
                .returning(BatchItemRow.key)
            )
            with self._sessions.begin() as session:
                claimed = session.execute(claim).scalar_one_or_none()
                if claimed is None and not session.scalar(select(exists().where(claimable))):
                    return None
            if claimed is not None:
                return self.item(claimed)
        return None

    def heartbeat(self, worker: str) -> None:
        """Tell the queue `worker` is alive: every item it holds keeps its claim for another lease."""
        with self._sessions.begin() as session:
            session.execute(
                update(BatchItemRow).where(BatchItemRow.claimed_by == worker, BatchItemRow.status == "running")
                .values(heartbeat_at=utc_now(), updated_at=BatchItemRow.updated_at)
            )

    def release(self, worker: str) -> list[str]:
        """Hand back what a worker held (it died or stopped): its items wait again for another worker.
        Returns their keys."""
        with self._sessions.begin() as session:
            keys = session.scalars(
                update(BatchItemRow).where(BatchItemRow.claimed_by == worker, BatchItemRow.status == "running")
                .values(status="pending", claimed_by=None, heartbeat_at=None)
                .returning(BatchItemRow.key)
            ).all()
        return list(keys)

    def states(self, keys: Sequence[str]) -> dict[str, BatchItemState]:
        """The stored state of each of `keys` that has a row, in one query."""
        with self._sessions() as session:
            rows = session.scalars(select(BatchItemRow).where(BatchItemRow.key.in_(list(keys))))
            return {row.key: BatchItemState.model_validate(row) for row in rows}

    def holders(self, keys: Sequence[str]) -> set[str]:
        """The workers holding any of `keys` now (however long ago they last beat)."""
        with self._sessions() as session:
            return set(session.scalars(
                select(BatchItemRow.claimed_by).where(
                    BatchItemRow.key.in_(list(keys)), BatchItemRow.status == "running", BatchItemRow.claimed_by.is_not(None)
                )
            ))

    def held_elsewhere(self, keys: Sequence[str], lease_s: float) -> int:
        """How many of `keys` live workers are running now (claims within their lease)."""
        fresh = utc_now() - timedelta(seconds=lease_s)
        with self._sessions() as session:
            return session.scalar(
                select(func.count()).where(
                    BatchItemRow.key.in_(list(keys)), BatchItemRow.status == "running", BatchItemRow.heartbeat_at >= fresh
                )
            )

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


def _insert_missing(session: Session, table: type, rows: list[dict[str, Any]]) -> None:
    """Insert the rows whose primary key is not taken yet, in one statement that a concurrent insert
    of the same key cannot fail (ON CONFLICT DO NOTHING on SQLite and PostgreSQL alike)."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert = {"postgresql": postgresql_insert, "sqlite": sqlite_insert}.get(dialect)
    if insert is None:  # another database: one by one, skipping what is there
        for row in rows:
            if session.get(table, [row[column.name] for column in table.__table__.primary_key]) is None:
                session.add(table(**row))
        return
    session.execute(insert(table).values(rows).on_conflict_do_nothing())


def _claimable(keys: Sequence[str], stale_before: datetime) -> ColumnElement[bool]:
    """Items among `keys` no live worker holds: waiting, or running under a claim that went quiet."""
    abandoned = and_(
        BatchItemRow.status == "running",
        or_(BatchItemRow.heartbeat_at.is_(None), BatchItemRow.heartbeat_at < stale_before),
    )
    return and_(BatchItemRow.key.in_(list(keys)), or_(BatchItemRow.status == "pending", abandoned))
