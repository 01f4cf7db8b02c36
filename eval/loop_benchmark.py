"""Benchmark of the ARPO loop's own cost, on the tiny models with an in-process brain of fixed latency.

    python -m arpo.eval.loop_benchmark [--latency 0.2] [--steps 3] [--framework vanilla enhanced]
                                       [--repeats 3] [--threads 1] [--json]

Prints, per iteration and node: wall time, model forward time, brain wait, the rest (framework
overhead: wall minus model forwards and brain waits), CLIP text forward passes, and brain calls with
how many ran at once. Later performance work is judged by these figures; nothing here is asserted.

Per framework it also prints `overhead_fraction`: the framework's time (the run's wall time minus
model forwards and brain waits: graph, checkpoints, history and image writes, image encoding for the
brain, tokenizing, preprocessing, bookkeeping) divided by the run's wall time. One warm-up run comes
first (first calls pay for lazy set-up), then `--repeats` measured runs; the median one is reported,
so a moment of load from elsewhere on a shared machine does not decide the figure. `--threads 1` (the
default) keeps the tiny models' forwards short, which makes the fraction the hardest to meet.

The brain (eval/benchmark_brain.py) answers under the openai SDK's HTTP client, so every request still
goes through ChatBackend and the SDK as it would to a real server; only the network is left out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass

from arpo import SAMPLE_IMAGE
from arpo.agents.brains import Brains
from arpo.core.run_config import BrainChoice, RunConfig
from arpo.eval.benchmark_brain import BenchmarkBrain
from arpo.graphs.invocation import build_context, execute_run, start_run
from arpo.graphs.telemetry import NodeTiming
from arpo.storage.history import History
from arpo.tools.model_stack import build_model_stack
from arpo.tools.reference_image import load_reference_image


@dataclass
class MeasuredRun:
    """One benchmark run: its node timings, wall time, and candidates per selection."""

    timings: list[NodeTiming]
    wall_s: float
    candidates: list[int]

    @property
    def model_s(self) -> float:
        return sum(timing.model_s for timing in self.timings)

    @property
    def brain_wait_s(self) -> float:
        return sum(timing.brain_wait_s for timing in self.timings)

    @property
    def framework_s(self) -> float:
        """Everything but model forwards and brain waits, inside nodes and between them."""
        return max(0.0, self.wall_s - self.model_s - self.brain_wait_s)

    @property
    def overhead_fraction(self) -> float:
        return self.framework_s / self.wall_s if self.wall_s > 0 else 0.0

    def summary(self) -> dict:
        """Plain JSON figures of this run."""
        in_nodes = sum(timing.wall_s for timing in self.timings)
        per_node: dict[str, float] = defaultdict(float)
        for timing in self.timings:
            per_node[timing.node] += timing.overhead_s
        return {
            "iterations": len(self.candidates),
            "run_wall_s": round(self.wall_s, 4),
            "model_s": round(self.model_s, 4),
            "brain_wait_s": round(self.brain_wait_s, 4),
            "framework_s": round(self.framework_s, 4),
            "framework_s_per_iteration": round(self.framework_s / max(1, len(self.candidates)), 4),
            "between_nodes_s": round(self.wall_s - in_nodes, 4),
            "framework_s_by_node": {node: round(seconds, 4) for node, seconds in per_node.items()},
            "overhead_fraction": round(self.overhead_fraction, 4),
        }


def measure(framework: str, latency_s: float, steps: int, models, repeats: int) -> tuple[MeasuredRun, list[float]]:
    """A warm-up run, then `repeats` runs; the run with the median overhead fraction, and every run's
    fraction in the order they ran.

    The runs share one history, as the runs of a batch or an evaluation do (and with it one checkpoint
    saver)."""
    with History.open() as history:
        run_once(framework, latency_s, 1, models, history)
        runs = [MeasuredRun(*run_once(framework, latency_s, steps, models, history)) for _ in range(max(1, repeats))]
    in_order = [run.overhead_fraction for run in runs]
    return sorted(runs, key=lambda run: run.overhead_fraction)[(len(runs) - 1) // 2], in_order


def run_once(
    framework: str, latency_s: float, steps: int, models, history: History | None = None
) -> tuple[list[NodeTiming], float, int]:
    """One run (in `history`, by default one opened for it); returns node timings, the run's total wall
    time and candidates per selection.

    One backend plays both brains, as one vLLM server serving both roles would.
    """
    backend = BenchmarkBrain(latency_s=latency_s, phrases_per_reply=6).backend()
    try:
        brain = BrainChoice(provider="vllm", model=backend.model, base_url=backend.config.base_url)
        config = RunConfig(models="tiny", vlm=brain, llm=brain, framework=framework, steps=steps, refine="none")
        history = History.open() if history is None else history
        context = build_context(config, history, models, brains=Brains(vlm=backend, llm=backend))
        handle = start_run(history, config, load_reference_image(SAMPLE_IMAGE), context)
        started = time.perf_counter()
        execute_run(handle)
        wall = time.perf_counter() - started
        candidates = [len(it.candidates) for it in history.get_run(handle.run_id).iterations_detail]
    finally:
        backend.close()
    return context.telemetry.timings, wall, candidates


def print_report(framework: str, latency_s: float, timings: list[NodeTiming], wall: float, candidates: list[int]) -> None:
    print(f"\n== framework {framework}, brain latency {latency_s:.2f} s, {len(candidates)} iteration(s) ==")
    print(f"{'iter':>4}  {'node':<10}  {'wall s':>7}  {'model s':>7}  {'brain s':>7}  {'other s':>7}  "
          f"{'clip txt':>8}  {'calls':>5}  {'at once':>7}")
    per_iteration: dict[int, list[NodeTiming]] = defaultdict(list)
    for timing in timings:
        per_iteration[timing.iteration].append(timing)
        print(f"{timing.iteration:>4}  {timing.node:<10}  {timing.wall_s:7.3f}  {timing.model_s:7.3f}  "
              f"{timing.brain_wait_s:7.3f}  {timing.overhead_s:7.3f}  {timing.clip_text_passes:>8}  "
              f"{timing.brain_calls:>5}  {timing.peak_concurrent_brain_calls:>7}")
    print("per iteration:")
    for index, nodes in sorted(per_iteration.items()):
        selection = [t for t in nodes if t.node == "select"]
        k = candidates[index] if index < len(candidates) else 0
        passes = selection[0].clip_text_passes if selection else 0
        print(f"  iteration {index}: wall {sum(t.wall_s for t in nodes):.3f} s, framework overhead "
              f"{sum(t.overhead_s for t in nodes):.3f} s, brain calls {sum(t.brain_calls for t in nodes)} "
              f"(at most {max(t.peak_concurrent_brain_calls for t in nodes)} at once), selection: "
              f"{k} candidates -> {passes} CLIP text forward passes")
    in_nodes = sum(t.wall_s for t in timings)
    print(f"run wall {wall:.3f} s; inside nodes {in_nodes:.3f} s; graph and checkpointing between nodes "
          f"{wall - in_nodes:.3f} s; model forwards {sum(t.model_s for t in timings):.3f} s; brain waits "
          f"{sum(t.brain_wait_s for t in timings):.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.2, help="brain reply latency in seconds")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--framework", nargs="+", default=["vanilla", "enhanced"], choices=["vanilla", "enhanced"])
    parser.add_argument("--repeats", type=int, default=3, help="measured runs per framework (the median is reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    args = parser.parse_args()
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    figures: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="arpo-bench-") as home:
        os.environ["ARPO_HOME"] = home  # keep benchmark runs out of the person's history
        models = build_model_stack("tiny")
        for framework in args.framework:
            run, fractions = measure(framework, args.latency, args.steps, models, args.repeats)
            figures[framework] = run.summary() | {
                "overhead_fractions_of_repeats": [round(fraction, 4) for fraction in fractions],
                "median_of_repeats": round(statistics.median(fractions), 4),
            }
            if not args.json:
                print_report(framework, args.latency, run.timings, run.wall_s, run.candidates)
                print(f"overhead_fraction {run.overhead_fraction:.4f} (framework {run.framework_s:.3f} s of "
                      f"{run.wall_s:.3f} s; repeats: {', '.join(f'{f:.4f}' for f in fractions)})")
    if args.json:
        settings = {"latency_s": args.latency, "steps": args.steps, "repeats": args.repeats, "threads": args.threads}
        print(json.dumps({"settings": settings, "frameworks": figures}, indent=2))


if __name__ == "__main__":
    main()
