"""Benchmark of batch throughput: the same items run one after another, then in lockstep (`--parallel`).

    python -m arpo.eval.batch_benchmark [--items 8] [--parallel 8] [--latency 0.2] [--steps 3] [--json]

Both runs use the tiny models and an in-process brain of fixed latency (eval/benchmark_brain.py),
answered through ChatBackend and the openai SDK as a real server's replies would be, each in a fresh
history. In lockstep, the items' renders and CLIP encodings that come together run as one batched
forward each and their brain calls run concurrently. Prints `items_per_minute` for both,
`throughput_ratio` (lockstep over one after another), and whether the results match: the same
prompts, and CLIP-I within `--tolerance` (a batched forward rounds a little differently).
Nothing here is asserted; the figures are for the README's performance table.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageOps

from arpo import SAMPLE_IMAGE
from arpo.agents.brains import Brains
from arpo.core.run_config import BrainChoice, RunConfig
from arpo.eval.benchmark_brain import BenchmarkBrain
from arpo.graphs.batch import BatchReport, run_batch
from arpo.tools.model_stack import build_model_stack


def reference_images(folder: Path, count: int) -> Path:
    """`count` distinct references made from the sample photo (crops, mirrors and tints)."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = Image.open(SAMPLE_IMAGE).convert("RGB")
    width, height = photo.size
    for number in range(count):
        shift = number * width // (4 * count)
        image = photo.crop((shift, 0, width - width // 4 + shift, height))
        image = ImageOps.mirror(image) if number % 2 else image
        tint = Image.new("RGB", image.size, ((number * 53) % 256, (number * 97) % 256, (number * 29) % 256))
        Image.blend(image, tint, 0.15).resize((64, 64)).save(folder / f"reference-{number:02d}.png")
    return folder


def timed_batch(folder: Path, config: RunConfig, models, latency_s: float, parallel: int | None,
                home: Path) -> tuple[BatchReport, float, float]:
    """One batch in a fresh history; its report, wall time and the seconds its model forwards took."""
    backend = BenchmarkBrain(latency_s=latency_s, phrases_per_reply=6).backend()
    forwards_before = _forward_seconds(models)
    try:
        started = time.perf_counter()
        report = run_batch(folder, config, models=models, brains=Brains(vlm=backend, llm=backend), parallel=parallel,
                           database_url=f"sqlite:///{home / f'batch-{parallel or 1}.db'}", image_root=home / "images")
        wall = time.perf_counter() - started
    finally:
        backend.close()
    return report, wall, _forward_seconds(models) - forwards_before


def _forward_seconds(models) -> float:
    return models.text_to_image.forward_seconds + models.clip.forward_seconds + models.captioner.forward_seconds


def compare(one: BatchReport, other: BatchReport) -> dict:
    """Whether two batches of the same items recovered the same prompts, and how far their scores are."""
    pairs = list(zip(one.items, other.items, strict=True))
    return {
        "identical_prompts": all(a.best_prompt == b.best_prompt and a.last_prompt == b.last_prompt for a, b in pairs),
        "max_clip_i_difference": max(abs((a.best_clip_i or 0) - (b.best_clip_i or 0)) for a, b in pairs),
        "all_finished": all(item.status == "finished" for item in one.items + other.items),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--parallel", type=int, default=8, help="items in lockstep in the second run")
    parser.add_argument("--latency", type=float, default=0.2, help="brain reply latency in seconds")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest CLIP-I difference that still matches")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="arpo-batch-bench-") as scratch:
        home = Path(scratch)
        os.environ["ARPO_HOME"] = str(home)  # keep benchmark runs out of the person's history
        folder = reference_images(home / "references", args.items)
        models = build_model_stack("tiny")
        brain = BrainChoice(provider="vllm", model="benchmark", base_url="http://benchmark.invalid/v1")
        config = RunConfig(models="tiny", vlm=brain, llm=brain, steps=args.steps, refine="none")
        sequential, sequential_s, sequential_forwards = timed_batch(folder, config, models, args.latency, None, home)
        lockstep, lockstep_s, lockstep_forwards = timed_batch(folder, config, models, args.latency, args.parallel, home)
        batches = models.text_to_image.calls
    figures = {
        "settings": {"items": args.items, "parallel": args.parallel, "latency_s": args.latency, "steps": args.steps,
                     "threads": args.threads},
        "sequential": {"seconds": round(sequential_s, 2), "items_per_minute": round(args.items / sequential_s * 60, 2),
                       "model_forward_seconds": round(sequential_forwards, 2)},
        "parallel": {"seconds": round(lockstep_s, 2), "items_per_minute": round(args.items / lockstep_s * 60, 2),
                     "model_forward_seconds": round(lockstep_forwards, 2)},
        "throughput_ratio": round(sequential_s / lockstep_s, 2),
        "renders": batches,
        **compare(sequential, lockstep),
    }
    figures["results_match"] = figures["identical_prompts"] and figures["max_clip_i_difference"] <= args.tolerance
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for name, value in figures.items():
            print(f"{name}: {value}")


if __name__ == "__main__":
    main()
