"""The benchmark runner: every method on every image with every seed, scored, stored, resumable.

For each (image, method, seed) cell the runner recovers a prompt, regenerates an image from it with
the text-to-image model and that seed, scores the result with the metric suite, and writes the cell
to the history at once. Cells already written are skipped, so running the same evaluation again
(same `--out` folder and settings) continues where an interrupted one stopped; an ARPO run that was
cut off mid-loop continues from its own checkpoint.

A method whose prompt does not depend on the seed (captioner, VLM caption, CLIP-Interrogator) is run
once per image; its later seeds reuse that prompt and its cost, and only the regeneration differs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from arpo.eval.metrics.suite import ScoredPrompt
from arpo.storage.evaluations import CellRecord, EvaluationStore

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

    def run(self, evaluation_id: str, dataset: EvalDataset, seeds: Sequence[int]) -> list[CellRecord]:
        """Fill every missing cell; returns all of the evaluation's finished cells."""
        store = EvaluationStore(self.history.engine)
        existing = {cell.key: cell for cell in store.cells(evaluation_id)}
        total = len(dataset.cases) * len(self.methods) * len(seeds)
        done = sum(1 for cell in existing.values() if cell.status == "done")
        if done:
            self.progress(f"resuming evaluation {evaluation_id}: {done} of {total} cells already done")
        position = 0
        for case in dataset.cases:
            reference = reference_sha256 = None
            for method in self.methods:
                for seed in seeds:
                    position += 1
                    key = (case.key, method.name, seed)
                    earlier = existing.get(key)
                    if earlier is not None and earlier.status == "done":
                        continue
                    if reference is None:  # loaded and stored once per image, only if a cell needs it
                        reference = case.load()
                        reference_sha256 = self.history.store_image(
                            reference.image, role="reference", metadata={"source": reference.name}
                        ).sha256
                    cell = self._run_cell(
                        store, evaluation_id, case, reference, reference_sha256, method, seed, earlier, existing
                    )
                    existing[key] = cell
                    self.progress(f"[{position}/{total}] {_cell_line(cell)}")
        return store.cells(evaluation_id, status="done")

    def _run_cell(self, store, evaluation_id, case: EvalCase, reference, reference_sha256: str, method: PromptMethod,
                  seed: int, earlier: CellRecord | None, existing: dict) -> CellRecord:
        recovered = self._reused_prompt(case, method, existing) if not method.seed_dependent else None
        if recovered is None:
            recovered = self._recover(store, evaluation_id, case, reference, method, seed, earlier, reference_sha256)
        generated = self.models.text_to_image.generate(recovered.prompt, seed)
        stored_generated = self.history.store_image(generated, role="generated", metadata={"prompt": recovered.prompt, "seed": seed})
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
            details={**recovered.details, "source": case.source},
        )
        store.save_cell(evaluation_id, cell)
        return cell

    def _recover(self, store, evaluation_id, case, reference, method, seed, earlier, reference_sha256) -> RecoveredPrompt:
        def remember_run(run_id: str) -> None:
            pending = CellRecord(image_key=case.key, method=method.name, seed=seed, status="pending",
                                 run_id=run_id, reference_sha256=reference_sha256)
            store.save_cell(evaluation_id, pending)

        resume_run_id = earlier.run_id if earlier is not None and earlier.status == "pending" else None
        if resume_run_id is not None:
            self.progress(f"continuing run {resume_run_id} of {case.key} · {method.name} · seed {seed}")
        return method.recover(reference, seed, resume_run_id=resume_run_id, on_run_started=remember_run)

    @staticmethod
    def _reused_prompt(case: EvalCase, method: PromptMethod, existing: dict) -> RecoveredPrompt | None:
        """The prompt a seed-independent method already recovered for this image, with its cost."""
        from arpo.eval.methods import MethodCost, RecoveredPrompt

        for (image_key, method_name, _seed), cell in existing.items():
            if image_key == case.key and method_name == method.name and cell.status == "done" and cell.prompt is not None:
                cost = MethodCost(cell.wall_seconds, cell.t2i_calls, cell.brain_calls, cell.prompt_tokens, cell.completion_tokens)
                details = {**cell.details, "prompt_reused_from_seed": _seed}
                return RecoveredPrompt(cell.prompt, cost, run_id=cell.run_id, trajectory=cell.trajectory, details=details)
        return None


def _cell_line(cell: CellRecord) -> str:
    shown = []
    for name in ("clip_t", "clip_i", "dino", "vit", "lpips", "bertscore"):
        if name in cell.scores:
            shown.append(f"{name} {cell.scores[name]['value']:.2f}")
    prompt = cell.prompt or ""
    prompt = prompt if len(prompt) <= 60 else prompt[:57] + "..."
    return f"{cell.image_key} · {cell.method} · seed {cell.seed}: {', '.join(shown)} · {prompt!r}"
