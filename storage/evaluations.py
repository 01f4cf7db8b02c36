"""Evaluations in the history: one row per benchmark, one row per (image, method, seed) cell.

A cell is written when its prompt has been recovered, regenerated and scored, so an interrupted
evaluation knows exactly which cells are left. An ARPO cell first records its run id as "pending", so a
resumed evaluation continues that run from its checkpoint instead of starting a new one.
"""

from __future__ import annotations

import secrets
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from arpo.core.errors import InvalidInputError
from arpo.storage.models import EVALUATION_ID_LENGTH, Evaluation, EvaluationCell

CELL_STATUSES = ("pending", "done")


class EvaluationRecord(BaseModel):
    """An evaluation as the runner and the report read it."""

    id: str
    status: str
    manifest: str
    out_dir: str
    config: dict[str, Any] = Field(default_factory=dict)


class CellRecord(BaseModel):
    """A cell as the runner writes it and the report reads it."""

    image_key: str
    method: str
    seed: int
    status: str = "done"
    run_id: str | None = None
    reference_sha256: str | None = None
    prompt: str | None = None
    ground_truth: str | None = None
    generated_sha256: str | None = None
    scores: dict[str, Any] = Field(default_factory=dict)
    wall_seconds: float = 0.0
    t2i_calls: int = 0
    brain_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    trajectory: list[Any] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.image_key, self.method, self.seed)


class EvaluationStore:
    """Evaluations and their cells, over the engine of a History. Each call is its own transaction."""

    def __init__(self, engine: Any) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def open_evaluation(self, manifest: str, out_dir: str, config: dict[str, Any]) -> EvaluationRecord:
        """The evaluation writing to `out_dir`: the earlier one when its configuration matches, else new.

        An earlier evaluation into the same folder with another configuration is refused, so two
        different benchmarks never mix their cells in one report.
        """
        with self._sessions.begin() as session:
            earlier = session.scalars(
                select(Evaluation).where(Evaluation.out_dir == out_dir).order_by(Evaluation.created_at.desc())
            ).first()
            if earlier is not None:
                if earlier.config != config or earlier.manifest != manifest:
                    raise InvalidInputError(
                        f"{out_dir} holds evaluation {earlier.id} with other settings; "
                        "use another --out folder to start a new evaluation"
                    )
                earlier.status = "running"
                return _evaluation_record(earlier)
            row = Evaluation(
                id=secrets.token_hex(EVALUATION_ID_LENGTH // 2),
                status="running",
                manifest=manifest,
                out_dir=out_dir,
                config=config,
            )
            session.add(row)
            return _evaluation_record(row)

    def evaluations(self) -> list[EvaluationRecord]:
        """Every evaluation, newest first."""
        with self._sessions() as session:
            rows = session.scalars(select(Evaluation).order_by(Evaluation.created_at.desc()))
            return [_evaluation_record(row) for row in rows]

    def set_status(self, evaluation_id: str, status: str) -> None:
        with self._sessions.begin() as session:
            row = session.get(Evaluation, evaluation_id)
            if row is None:
                raise InvalidInputError(f"no evaluation with id {evaluation_id}")
            row.status = status

    def cells(self, evaluation_id: str, status: str | None = None) -> list[CellRecord]:
        """The evaluation's cells (all, or those with one status), in the order they were written."""
        query = select(EvaluationCell).where(EvaluationCell.evaluation_id == evaluation_id)
        if status is not None:
            query = query.where(EvaluationCell.status == status)
        with self._sessions() as session:
            rows = session.scalars(query.order_by(EvaluationCell.id)).all()
            return [_cell_record(row) for row in rows]

    def save_cell(self, evaluation_id: str, cell: CellRecord) -> None:
        """Write a cell, replacing an earlier write of the same (image, method, seed)."""
        if cell.status not in CELL_STATUSES:
            raise ValueError(f"unknown cell status {cell.status!r}")
        with self._sessions.begin() as session:
            row = session.scalars(
                select(EvaluationCell).where(
                    EvaluationCell.evaluation_id == evaluation_id,
                    EvaluationCell.image_key == cell.image_key,
                    EvaluationCell.method == cell.method,
                    EvaluationCell.seed == cell.seed,
                )
            ).first()
            if row is None:
                row = EvaluationCell(evaluation_id=evaluation_id)
                session.add(row)
            for name, value in cell.model_dump().items():
                setattr(row, name, value)


def _evaluation_record(row: Evaluation) -> EvaluationRecord:
    return EvaluationRecord(
        id=row.id, status=row.status, manifest=row.manifest, out_dir=row.out_dir, config=row.config or {}
    )


def _cell_record(row: EvaluationCell) -> CellRecord:
    values = {name: getattr(row, name) for name in CellRecord.model_fields}
    return CellRecord.model_validate({name: value for name, value in values.items() if value is not None})
