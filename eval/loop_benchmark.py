"""Benchmark of the ARPO loop's own cost, on the tiny models with a scripted brain of fixed latency.

    python -m arpo.eval.loop_benchmark [--latency 0.2] [--steps 3] [--framework vanilla enhanced]

Prints, per iteration and node: wall time, model forward time, brain wait, the rest (framework
overhead: wall minus model forwards and brain waits), CLIP text forward passes, and brain calls with
how many ran at once. Later performance work is judged by these figures; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import defaultdict

from arpo import SAMPLE_IMAGE
from arpo.agents.scripted_server import BrainServer, ScriptedBrain
from arpo.graphs.invocation import build_context, execute_run, start_run
from arpo.graphs.run_config import BrainChoice, RunConfig
from arpo.graphs.telemetry import NodeTiming
from arpo.storage.history import History
from arpo.tools.model_stack import build_model_stack
from arpo.tools.reference_image import load_reference_image



def run_once(framework: str, latency_s: float, steps: int, models) -> tuple[list[NodeTiming], float, int]:
    """One run; returns node timings, the run's total wall time and candidates per selection."""
    with BrainServer(ScriptedBrain(latency_s=latency_s, phrases_per_reply=6)) as server:
        brain = BrainChoice(provider="vllm", base_url=server.base_url)
        config = RunConfig(models="tiny", vlm=brain, llm=brain, framework=framework, steps=steps)
        history = History.open()
        context = build_context(config, history, models=models)
        handle = start_run(history, config, load_reference_image(SAMPLE_IMAGE), context)
        started = time.perf_counter()
        execute_run(handle)
        wall = time.perf_counter() - started
        candidates = [len(it.candidates) for it in history.get_run(handle.run_id).iterations_detail]
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
    parser.add_argument("--latency", type=float, default=0.2, help="scripted brain reply latency in seconds")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--framework", nargs="+", default=["vanilla", "enhanced"], choices=["vanilla", "enhanced"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="arpo-bench-") as home:
        os.environ["ARPO_HOME"] = home  # keep benchmark runs out of the person's history
        models = build_model_stack("tiny")
        for framework in args.framework:
            timings, wall, candidates = run_once(framework, args.latency, args.steps, models)
            print_report(framework, args.latency, timings, wall, candidates)


if __name__ == "__main__":
    main()
