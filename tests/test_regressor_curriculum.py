"""The curriculum's difficulty scores, both splitting heuristics and the easy/medium/hard schedule."""

from __future__ import annotations

import numpy as np
import pytest

from arpo.core.errors import InvalidInputError
from arpo.training.regressor.curriculum import (
    DifficultySplit,
    curriculum_schedule,
    default_thresholds,
    difficulty_scores,
    split_by_thresholds,
    split_difficulty,
    split_in_thirds,
    stage_batches,
)


def test_difficulty_is_the_mean_cosine_over_epochs_optionally_weighted():
    cosines = np.array([[0.1, 0.5, 0.9], [0.3, 0.5, 0.7]])
    np.testing.assert_allclose(difficulty_scores(cosines), [0.2, 0.5, 0.8])
    np.testing.assert_allclose(difficulty_scores(cosines, weights=[1, 3]), [0.25, 0.5, 0.75])


def test_thirds_are_equal_chunks_ranked_from_highest_cosine():
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.3, 0.8, 0.2, 0.6, 0.4])
    split = split_in_thirds(scores)
    assert split.easy.tolist() == [1, 5, 3]  # 0.9, 0.8, 0.7
    assert split.medium.tolist() == [7, 2, 8]  # 0.6, 0.5, 0.4
    assert split.hard.tolist() == [4, 6, 0]  # 0.3, 0.2, 0.1
    assert split_in_thirds(np.arange(10.0)).sizes() == {"easy": 4, "medium": 3, "hard": 3}


def test_thresholds_cut_at_high_and_low():
    scores = np.array([0.9, 0.2, 0.6, 0.75, 0.4, 0.5])
    split = split_by_thresholds(scores, high=0.6, low=0.4)
    assert split.easy.tolist() == [0, 3, 2]  # >= 0.6
    assert split.medium.tolist() == [5, 4]  # [0.4, 0.6)
    assert split.hard.tolist() == [1]  # < 0.4
    assert split.thresholds == (0.6, 0.4)
    with pytest.raises(InvalidInputError, match="low <= high"):
        split_by_thresholds(scores, high=0.3, low=0.5)


def test_default_thresholds_make_a_large_easy_chunk_and_a_small_hard_one():
    scores = np.linspace(0.0, 1.0, 101)
    high, low = default_thresholds(scores)
    assert high == pytest.approx(0.5) and low == pytest.approx(0.1)
    split = split_difficulty("thresholds", scores)
    assert split.sizes() == {"easy": 51, "medium": 40, "hard": 10}


def test_schedule_adds_one_chunk_per_stage_with_equal_steps():
    split = DifficultySplit(easy=np.array([0, 1]), medium=np.array([2, 3]), hard=np.array([4]))
    stages = curriculum_schedule(split, total_steps=10)
    assert [stage.name for stage in stages] == ["easy", "easy+medium", "all"]
    assert [sorted(stage.pool.tolist()) for stage in stages] == [[0, 1], [0, 1, 2, 3], [0, 1, 2, 3, 4]]
    assert [stage.steps for stage in stages] == [3, 3, 4]

    batches = list(stage_batches(stages, batch_size=2, rng=np.random.default_rng(0)))
    assert len(batches) == 10
    for name, batch in batches[:3]:
        assert name == "easy" and set(batch.tolist()) <= {0, 1}
    assert {int(i) for _, batch in batches[3:6] for i in batch} <= {0, 1, 2, 3}
    # Within a stage each pass over the pool covers every sample before any repeats.
    assert sorted(int(i) for _, batch in batches[3:5] for i in batch) == [0, 1, 2, 3]


def test_an_empty_stage_hands_its_steps_to_the_next():
    split = DifficultySplit(easy=np.array([], dtype=int), medium=np.array([0, 1]), hard=np.array([2]))
    stages = curriculum_schedule(split, total_steps=9)
    assert [(stage.name, stage.steps) for stage in stages] == [("easy+medium", 6), ("all", 3)]
