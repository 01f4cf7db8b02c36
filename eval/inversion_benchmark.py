"""What each inversion method costs: seconds per optimisation step and peak memory.

    python -m arpo.eval.inversion_benchmark [--models tiny] [--steps 5] [--methods pez,ph2p,editor] [--json]

Each method runs in a fresh child process, so its peak resident memory is its own and not the
high-water mark of a method before it. Reported per method: seconds per optimisation step (the
first step, which pays for lazy initialisation, is left out when there are several), the whole
inversion's wall time, the peak increase of resident memory over the loaded models (RSS), the peak of
Python-level allocations (tracemalloc; tensors are not counted there) and, on a GPU, torch's peak
CUDA allocation. The EDITOR paper reports 1369 s (EDITOR) and 3482 s (PH2P) for 1000 iterations on
an A100, i.e. about 1.4 and 3.5 s per step at SD 1.5 size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tracemalloc
from collections.abc import Sequence

METHODS = ("pez", "ph2p", "editor")


def measure(method: str, models_name: str, steps: int, device: str | None, seed: int = 0) -> dict:
    """Run one method in this process and return its costs as plain values."""
    import torch

    from arpo import SAMPLE_IMAGE
    from arpo.core.run_config import RunConfig
    from arpo.tools.inverters import build_inverter
    from arpo.tools.model_stack import build_model_stack
    from arpo.tools.reference_image import load_reference_image

    models = build_model_stack(models_name, device=device)
    reference = load_reference_image(SAMPLE_IMAGE).image
    inverter = build_inverter(method, RunConfig(models=models_name, inversion_steps=steps))
    cuda = torch.cuda.is_available() and models.text_to_image.pipeline.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = _peak_rss_mib()
    tracemalloc.start()
    result = inverter.invert(reference, models, seed=seed)
    _, python_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    optimisation = [s for s in result.steps if s.details.get("phase", "optimisation") != "embedding-to-text"]
    return {
        "method": method,
        "models": models_name,
        "device": str(models.text_to_image.pipeline.device),
        "steps": len(optimisation),
        "seconds_per_step": _seconds_per_step([s.seconds for s in optimisation]),
        "total_seconds": round(result.seconds, 3),
        "peak_rss_increase_mib": round(_peak_rss_mib() - rss_before, 1),
        "python_peak_mib": round(python_peak / 2**20, 2),
        "cuda_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
    }


def _seconds_per_step(stamps: Sequence[float]) -> float | None:
    """Mean step time from the steps' cumulative time stamps, the warm-up step left out when possible."""
    if not stamps:
        return None
    if len(stamps) == 1:
        return round(stamps[0], 4)
    return round((stamps[-1] - stamps[0]) / (len(stamps) - 1), 4)


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def _table(rows: list[dict]) -> str:
    header = f"{'method':8} {'device':8} {'steps':>5} {'s/step':>9} {'total s':>8} {'RSS+ MiB':>9} {'py MiB':>7} {'CUDA MiB':>9}"
    lines = [header]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['method']:8} error: {row['error']}")
            continue
        cuda = "-" if row["cuda_peak_mib"] is None else f"{row['cuda_peak_mib']:.1f}"
        per_step = "-" if row["seconds_per_step"] is None else f"{row['seconds_per_step']:.4f}"
        lines.append(
            f"{row['method']:8} {row['device']:8} {row['steps']:>5} {per_step:>9} {row['total_seconds']:>8.2f} "
            f"{row['peak_rss_increase_mib']:>9.1f} {row['python_peak_mib']:>7.2f} {cuda:>9}"
        )
    return "\n".join(lines)


def _in_child(method: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "arpo.eval.inversion_benchmark", "--one", method, "--models", args.models,
               "--steps", str(args.steps)] + (["--device", args.device] if args.device else [])
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["failed"])[-1]
        return {"method": method, "error": last}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Seconds per step and peak memory of each inversion method.")
    parser.add_argument("--models", default="tiny", help="model stack (default: tiny)")
    parser.add_argument("--steps", type=int, default=5, help="optimisation steps per method (default: 5)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child-process mode: measure one method
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.models, args.steps, args.device)))
        return 0
    methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s): {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    rows = [_in_child(method, args) for method in methods]
    print(json.dumps(rows, indent=2) if args.json else _table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
