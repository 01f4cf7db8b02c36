"""The paper's curriculum: rank training samples by how well a first, ordinary training pass fitted them,
then retrain from scratch introducing easy, medium and hard samples in turn.

Difficulty comes from the first pass: after each of its epochs the cosine similarity between every
training sample's predicted and target embedding is recorded; a sample's score is the (weighted) mean
over epochs, so a high score means easy (well aligned image and prompt), a low one hard (noisy).

Two ways to cut the ranking into easy / medium / hard chunks:
- `thirds`: three equally sized chunks of the ranking;
- `thresholds`: scores at or above `high` are easy, below `low` hard, the rest medium. By default `high`
  is the score above which half the samples lie (the easy chunk is a large share) and `low` the score
  below which a tenth lie (only the really hard ones).

The second pass takes as many optimisation steps as the first, split equally between three stages that
draw batches from easy, then easy + medium, then everything.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from arpo.core.errors import InvalidInputError

CurriculumKind = Literal["none", "thirds", "thresholds"]
CURRICULUM_KINDS = ("none", "thirds", "thresholds")
DEFAULT_EASY_FRACTION = 0.5
DEFAULT_HARD_FRACTION = 0.1
STAGE_NAMES = ("easy", "easy+medium", "all")


def difficulty_scores(cosines_per_epoch: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """[n] mean over epochs of [epochs, n] cosine similarities, weighted per epoch if `weights` is given."""
    cosines = np.asarray(cosines_per_epoch, dtype=np.float64)
    if cosines.ndim != 2 or cosines.shape[0] == 0:
        raise ValueError("need cosine similarities of shape [epochs, samples] with at least one epoch")
    return np.average(cosines, axis=0, weights=None if weights is None else np.asarray(weights, dtype=np.float64))


@dataclass
class DifficultySplit:
    """Sample positions of each chunk, easiest first within a chunk."""

    easy: np.ndarray
    medium: np.ndarray
    hard: np.ndarray
    thresholds: tuple[float, float] | None = None
    """(high, low) when split by thresholds."""

    def sizes(self) -> dict[str, int]:
        return {"easy": len(self.easy), "medium": len(self.medium), "hard": len(self.hard)}


def split_in_thirds(scores: np.ndarray) -> DifficultySplit:
    """Three chunks of (nearly) equal size along the ranking, easiest (highest score) first."""
    order = _easiest_first(scores)
    easy, medium, hard = np.array_split(order, 3)
    return DifficultySplit(easy, medium, hard)


def split_by_thresholds(scores: np.ndarray, high: float, low: float) -> DifficultySplit:
    """easy: score >= high; hard: score < low; medium: between."""
    if low > high:
        raise InvalidInputError(f"Curriculum thresholds must have low <= high (got low {low}, high {high}).")
    order = _easiest_first(scores)
    ranked = np.asarray(scores)[order]
    return DifficultySplit(
        easy=order[ranked >= high],
        medium=order[(ranked < high) & (ranked >= low)],
        hard=order[ranked < low],
        thresholds=(float(high), float(low)),
    )


def default_thresholds(
    scores: np.ndarray, easy_fraction: float = DEFAULT_EASY_FRACTION, hard_fraction: float = DEFAULT_HARD_FRACTION
) -> tuple[float, float]:
    """(high, low) such that about `easy_fraction` of the samples are easy and `hard_fraction` hard."""
    scores = np.asarray(scores, dtype=np.float64)
    return float(np.quantile(scores, 1.0 - easy_fraction)), float(np.quantile(scores, hard_fraction))


def split_difficulty(
    kind: CurriculumKind, scores: np.ndarray, thresholds: tuple[float, float] | None = None
) -> DifficultySplit:
    """Split by `kind` ("thirds" or "thresholds"; thresholds default to `default_thresholds`)."""
    if kind == "thirds":
        return split_in_thirds(scores)
    if kind == "thresholds":
        high, low = thresholds if thresholds is not None else default_thresholds(scores)
        return split_by_thresholds(scores, high, low)
    raise InvalidInputError(f"Unknown curriculum split '{kind}'; use thirds or thresholds.")


@dataclass
class CurriculumStage:
    name: str
    pool: np.ndarray
    """Sample positions this stage draws batches from."""
    steps: int


def curriculum_schedule(split: DifficultySplit, total_steps: int) -> list[CurriculumStage]:
    """Three stages with equal shares of `total_steps` (the remainder goes to the last ones).

    Each stage's pool adds the next chunk to the previous pool. A stage whose pool is empty (no easy
    samples under the thresholds) hands its steps to the next stage.
    """
    pools = [
        split.easy,
        np.concatenate([split.easy, split.medium]),
        np.concatenate([split.easy, split.medium, split.hard]),
    ]
    base, remainder = divmod(total_steps, len(pools))
    shares = [base + (1 if index >= len(pools) - remainder else 0) for index in range(len(pools))]
    stages, carried = [], 0
    for name, pool, share in zip(STAGE_NAMES, pools, shares, strict=True):
        if len(pool) == 0:
            carried += share
            continue
        stages.append(CurriculumStage(name, pool.astype(np.int64), share + carried))
        carried = 0
    return stages


def stage_batches(
    stages: Sequence[CurriculumStage], batch_size: int, rng: np.random.Generator
) -> Iterator[tuple[str, np.ndarray]]:
    """(stage name, batch of sample positions) for every step of every stage, in order.

    Within a stage the pool is shuffled, walked batch by batch, and reshuffled when used up.
    """
    for stage in stages:
        order, cursor = rng.permutation(stage.pool), 0
        for _ in range(stage.steps):
            if cursor >= len(order):
                order, cursor = rng.permutation(stage.pool), 0
            yield stage.name, order[cursor : cursor + batch_size]
            cursor += batch_size


def _easiest_first(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
