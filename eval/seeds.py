"""Which seeds an evaluation searches with, renders its scores with, and made its references with.

A method that searches for a prompt (ARPO, PH2P, EDITOR, PEZ) keeps the prompt whose renders at its
search seed looked best. Scoring that prompt again at the same seed measures how well the method fit
one noise sample, not how well the prompt describes the image. So the three kinds of seed live in
separate ranges and the runner refuses any overlap:

- search seeds: what methods search with (`--search-seed`, default 0);
- evaluation seeds: what every recovered prompt is rendered and scored with, `EVAL_SEED_BASE` and up
  (default 3 of them: 1000, 1001, 1002); scores are mean ± std over these;
- reference seeds: what `arpo eval-set` makes reference k with, `REFERENCE_SEED_BASE + k`.

A method's final prompt is fixed before any evaluation render exists, and evaluation renders are
never shown to it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from arpo.core.errors import InvalidInputError

DEFAULT_SEARCH_SEED = 0
EVAL_SEED_BASE = 1_000
DEFAULT_EVAL_SEED_COUNT = 3
REFERENCE_SEED_BASE = 1_000_000


@dataclass(frozen=True)
class SeedPlan:
    """The search seed every method uses and the evaluation seeds every prompt is scored with."""

    search_seed: int
    eval_seeds: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.eval_seeds:
            raise InvalidInputError("an evaluation needs at least one evaluation seed")
        if self.search_seed in self.eval_seeds:
            raise InvalidInputError(
                f"search seed {self.search_seed} is also an evaluation seed; evaluation seeds are "
                f"{EVAL_SEED_BASE} and up, so pick a search seed below {EVAL_SEED_BASE}"
            )

    @classmethod
    def default(cls, eval_seed_count: int = DEFAULT_EVAL_SEED_COUNT, search_seed: int = DEFAULT_SEARCH_SEED) -> SeedPlan:
        """`eval_seed_count` evaluation seeds from EVAL_SEED_BASE, with `search_seed` for searching."""
        if eval_seed_count < 1:
            raise InvalidInputError(f"--seeds must be at least 1, not {eval_seed_count}")
        return cls(search_seed, tuple(range(EVAL_SEED_BASE, EVAL_SEED_BASE + eval_seed_count)))

    def describe(self) -> dict[str, object]:
        return {"search_seed": self.search_seed, "eval_seeds": list(self.eval_seeds)}


def check_reference_seeds(plan: SeedPlan, reference_seeds: Iterable[tuple[str, int | None]]) -> None:
    """Refuse references made with an evaluation seed or with the search seed.

    `reference_seeds` is (image key, seed that generated it or None when unknown) per reference. A
    reference rendered with an evaluation seed would be scored against a render of the same noise;
    one rendered with the search seed would hand searching methods the reference's own noise.
    """
    for key, seed in reference_seeds:
        if seed is None:
            continue
        if seed in plan.eval_seeds or seed == plan.search_seed:
            role = "an evaluation seed" if seed in plan.eval_seeds else "the search seed"
            raise InvalidInputError(
                f"reference {key!r} was generated with seed {seed}, which is {role} of this evaluation; "
                f"remake the set with `arpo eval-set` (references use seeds from {REFERENCE_SEED_BASE})"
            )


def check_search_seeds(method: str, search_seeds: Sequence[int], plan: SeedPlan) -> None:
    """Refuse a recovered prompt whose search touched an evaluation seed (a method bug, not user input)."""
    shared = sorted(set(search_seeds) & set(plan.eval_seeds))
    if shared:
        raise RuntimeError(f"method {method!r} searched with evaluation seed(s) {shared}")
