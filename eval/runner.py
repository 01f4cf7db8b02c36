"""The benchmark runner: every method on every image, scored at every evaluation seed, stored, resumable.

For each (image, method) the method recovers one prompt, searching with the plan's search seed. That
prompt is then regenerated with each evaluation seed and scored with the metric suite; each (image,
method, evaluation seed) cell is written to the history at once. Evaluation seeds are disjoint from
the search seed and from the seeds that made the references (eval/seeds.py), and no evaluation render
exists before the prompt is final, so no method can pick its prompt by the renders it is scored on.

Cells already written are skipped, so running the same evaluation again (same `--out` folder and
settings) continues where an interrupted one stopped: a prompt already scored at one evaluation seed
is reused for the others, and an ARPO run that was cut off mid-loop continues from its checkpoint.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from arpo.eval.metrics.suite import ScoredPrompt
from arpo.eval.seeds import SeedPlan, check_reference_seeds, check_search_seeds
from arpo.storage.evaluations import CellRecord

if TYPE_CHECKING:
    from arpo.eval.datasets import EvalCase, EvalDataset
    from arpo.eval.methods import PromptMethod, RecoveredPrompt
    from arpo.eval.metrics.suite import MetricSuite
    from arpo.storage.history import History
    from arpo.tools.model_stack import ModelStack

Progress = Callable[[str], None]


def stderr_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class EvalRunner:
    """Runs cells of one evaluation; `progress` gets one line per cell (stderr by default)."""

    history: History
    models: ModelStack
    suite: MetricSuite
    methods: Sequence[PromptMethod]
    progress: Progress = stderr_progress

    def run(self, evaluation_id: str, dataset: EvalDataset, plan: SeedPlan) -> list[CellRecord]:
        """Fill every missing cell; returns all of the evaluation's finished cells."""
        check_reference_seeds(plan, ((case.key, case.generation_seed) for case in dataset.cases))
        store = self.history.evaluations
        existing = {cell.key: cell for cell in store.cells(evaluation_id)}
        total = len(dataset.cases) * len(self.methods) * len(plan.eval_seeds)
        done = sum(1 for cell in existing.values() if cell.status == "done")
        if done:
            self.progress(f"resuming evaluation {evaluation_id}: {done} of {total} cells already done")
        position = 0
        for case in dataset.cases:
            for method in self.methods:
                self.run_unit(evaluation_id, case, method, plan, existing, first_position=position, total=total)
                position += len(plan.eval_seeds)
        return store.cells(evaluation_id, status="done")

    def run_unit(self, evaluation_id: str, case: EvalCase, method: PromptMethod, plan: SeedPlan,
                 existing: dict | None = None, *, first_position: int = 0, total: int | None = None) -> list[CellRecord]:
        """One image and one method: recover the prompt (or reuse the one already scored) and score
        every evaluation seed still missing; the unit a worker takes from an evaluation's queue."""
        store = self.history.evaluations
        if existing is None:
            existing = {cell.key: cell for cell in store.cells(evaluation_id)}
        missing = [seed for seed in plan.eval_seeds if not _is_done(existing.get((case.key, method.name, seed)))]
        if not missing:
            return []
        reference = case.load()
        reference_sha256 = self.history.store_image(reference.image, role="reference", metadata={"source": reference.name}).sha256
        recovered = self._reused_prompt(case, method, existing)
        if recovered is None:
            recovered = self._recover(store, evaluation_id, case, reference, method, plan, reference_sha256, existing)
        check_search_seeds(method.name, recovered.search_seeds, plan)
        scored = []
        for offset, seed in enumerate(plan.eval_seeds, start=1):
            if seed not in missing:
                continue
            cell = self._score_cell(store, evaluation_id, case, reference, reference_sha256, method, seed, recovered)
            existing[cell.key] = cell
            scored.append(cell)
            where = f"[{first_position + offset}/{total}] " if total else ""
            self.progress(f"{where}{_cell_line(cell)}")
        return scored

    def _score_cell(self, store, evaluation_id, case: EvalCase, reference, reference_sha256: str,
                    method: PromptMethod, seed: int, recovered: RecoveredPrompt) -> CellRecord:
        """Render the final prompt with evaluation seed `seed` and score it; the method never sees this."""
        generated = self.models.text_to_image.generate(recovered.prompt, seed)
        stored_generated = self.history.store_image(
            generated, role="generated", metadata={"prompt": recovered.prompt, "seed": seed, "purpose": "evaluation"}
        )
        scores = self.suite.score(ScoredPrompt(reference.image, recovered.prompt, generated, case.ground_truth))
        cell = CellRecord(
            image_key=case.key,
            method=method.name,
            seed=seed,
            status="done",
            run_id=recovered.run_id,
            reference_sha256=reference_sha256,
            prompt=recovered.prompt,
            ground_truth=case.ground_truth,
            generated_sha256=stored_generated.sha256,
            scores={name: {"value": score.value, "model": score.model} for name, score in scores.items()},
            wall_seconds=recovered.cost.wall_seconds,
            t2i_calls=recovered.cost.t2i_calls,
            brain_calls=recovered.cost.brain_calls,
            prompt_tokens=recovered.cost.prompt_tokens,
            completion_tokens=recovered.cost.completion_tokens,
            trajectory=recovered.trajectory,
            details={
                **recovered.details,
                "source": case.source,
                "search_seeds": list(recovered.search_seeds),
                "eval_seed": seed,
                "reference_seed": case.generation_seed,
            },
        )
        store.save_cell(evaluation_id, cell)
        return cell

    def _recover(self, store, evaluation_id, case, reference, method, plan: SeedPlan, reference_sha256,
                 existing: dict) -> RecoveredPrompt:
        # A started run is remembered on the (image, method) cell of the first evaluation seed.
        first_key = (case.key, method.name, plan.eval_seeds[0])

        def remember_run(run_id: str) -> None:
            pending = CellRecord(image_key=case.key, method=method.name, seed=plan.eval_seeds[0], status="pending",
                                 run_id=run_id, reference_sha256=reference_sha256)
            store.save_cell(evaluation_id, pending)
            existing[first_key] = pending

        resume_run_id = next(
            (cell.run_id for (image_key, method_name, _), cell in existing.items()
             if image_key == case.key and method_name == method.name and cell.status == "pending" and cell.run_id),
            None,
        )
        if resume_run_id is not None:
            self.progress(f"continuing run {resume_run_id} of {case.key} · {method.name}")
        return method.recover(reference, plan.search_seed, resume_run_id=resume_run_id, on_run_started=remember_run)

    @staticmethod
    def _reused_prompt(case: EvalCase, method: PromptMethod, existing: dict) -> RecoveredPrompt | None:
        """The prompt this method already recovered for this image (scored at another evaluation seed
        by an earlier, interrupted invocation), with its cost."""
        from arpo.eval.methods import MethodCost, RecoveredPrompt

        for (image_key, method_name, seed), cell in existing.items():
            if image_key == case.key and method_name == method.name and _is_done(cell) and cell.prompt is not None:
                cost = MethodCost(cell.wall_seconds, cell.t2i_calls, cell.brain_calls, cell.prompt_tokens, cell.completion_tokens)
                details = {key: value for key, value in cell.details.items()
                           if key not in ("source", "search_seeds", "eval_seed", "reference_seed")}
                return RecoveredPrompt(cell.prompt, cost, run_id=cell.run_id, trajectory=cell.trajectory,
                                       details=details, search_seeds=list(cell.details.get("search_seeds", [])))
        return None


def _is_done(cell: CellRecord | None) -> bool:
    return cell is not None and cell.status == "done"


def _cell_line(cell: CellRecord) -> str:
    shown = []
    for name in ("clip_t", "clip_i", "dino", "vit", "lpips", "bertscore"):
        if name in cell.scores:
            shown.append(f"{name} {cell.scores[name]['value']:.2f}")
    prompt = cell.prompt or ""
    prompt = prompt if len(prompt) <= 60 else prompt[:57] + "..."
    return f"{cell.image_key} · {cell.method} · eval seed {cell.seed}: {', '.join(shown)} · {prompt!r}"
