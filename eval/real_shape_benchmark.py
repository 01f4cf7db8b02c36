"""What one ARPO iteration, one PH2P step and one EDITOR step cost at Stable Diffusion 1.5's real size.

    python -m arpo.eval.real_shape_benchmark [--resolution 256] [--dtype float32|float16|bfloat16]
        [--device cpu|cuda] [--denoise-steps 10] [--phrases-per-bank 100] [--quick] [--json]
        [--placement default|low-vram|both] [--speedups attention channels-last compile]

No weights are downloaded: the UNet, VAE and CLIP ViT-L/14 text encoder are the real SD 1.5
architectures, built with random weights from the configuration files in `arpo/configs/sd15/`, put
together with the offline CLIP tokenizer into a real StableDiffusionPipeline (PNDM, SD 1.5's own
scheduler and noise schedule) behind arpo's `TextToImage`; the scorer is open_clip's ViT-L-14 (with
OpenAI's QuickGELU), also random. Random weights cost the same arithmetic as trained ones, so the
seconds and memory are those of the real models; the images and prompts mean nothing.

What is timed:
- one ARPO iteration with the offline brain, through the loop's own graph (generate, compare,
  propose, select). The offline proposer embeds only the first `--phrases-per-bank` phrases of each
  phrase bank (the full banks hold ~106k phrases: minutes of ViT-L-14 on a CPU), once, before the
  iteration; that one-off cost is reported apart. The reference image's CLIP embedding, computed once
  per run, is also made before the iteration. The captioner is not used (the run starts from a fixed
  prompt), so a tiny one stands in.
- PH2P and EDITOR through their public `invert`, for `--inversion-steps` optimisation steps each;
  the benchmark stops each inversion once its steps are timed, so PH2P's final re-rendering of its
  candidates and EDITOR's embedding-to-text search (neither of which is an optimisation step) do not
  run. With two or more steps the figure is the mean of the steps after the first (which also pays
  for setup: encoding the reference with the VAE, the prompts with the text encoder); with one it is
  the first step, setup included.
- peak memory: on CUDA torch's peak allocation in each of the three phases (reset at its start, so
  the models on the device then are included); on the CPU the process's peak resident set size, model
  construction included, which is no accelerator measurement.

`--placement` says where the models wait between uses: `default` (the generator and the scorer live
on the device), `low-vram` (what `--low-vram` does: every model rests in CPU memory and takes turns on
the device, one at a time) or `both`, one after the other with the same work, so the two peaks can be
compared (`peak_memory_mb_by_placement` in the JSON). The captioner is tiny here, so BLIP-2's own
turn (its ~7 GB of half-precision weights) is not part of these figures.

`--speedups` also times one render after each GPU setting, one added on top of the other
(eval/render_speedups.py): classic vs scaled-dot-product attention, channels-last, torch.compile.

`--quick` lowers the work to what a busy two-core CPU does in minutes (see QUICK); the settings used
are in the output either way. `--smoke` runs the same code path on the tiny test models in seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

from arpo.core.errors import ArpoError, InvalidInputError
from arpo.eval.inversion_benchmark import _seconds_per_step
from arpo.eval.peak_memory import CUDA_KIND, PhasePeaks
from arpo.eval.render_speedups import SPEEDUP_STEPS, time_speedups

CONFIG_PACKAGE_DIR = ("configs", "sd15")
SD15_PARTS = ("unet", "vae", "text_encoder", "scheduler")
SCORER_ARCHITECTURE = "ViT-L-14"
START_PROMPT = "a photograph of a cat sitting on a wooden table, soft window light"
PLACEMENTS = ("default", "low-vram")
PHASES = ("arpo_iteration", "ph2p", "editor")


@dataclass(frozen=True)
class Workload:
    """How much work each timed piece does; recorded in the output so figures can be compared."""

    resolution: int = 256
    denoise_steps: int = 10
    """Denoising steps per generated image (the loop's renders; SD 1.5's preset uses 30)."""
    phrases_per_bank: int = 100
    """Phrases of each clip-interrogator bank the offline proposer embeds (the first N, file order)."""
    inversion_steps: int = 2
    ph2p_lbfgs_iterations: int | None = None
    """None: PH2P's own default (up to 20 L-BFGS iterations per step)."""
    editor_denoising_steps: int | None = None
    """None: EDITOR's own default (5 differentiable denoising steps per optimisation step)."""
    seed: int = 0


# What --quick changes: few enough UNet passes that a shared two-core CPU finishes in minutes.
QUICK = {
    "denoise_steps": 2,
    "phrases_per_bank": 10,
    "inversion_steps": 1,
    "ph2p_lbfgs_iterations": 1,
    "editor_denoising_steps": 1,
}


# ---- the real-shape models ---------------------------------------------------------------------------


def sd15_config(part: str) -> dict[str, Any]:
    """One SD 1.5 component's configuration ("unet", "vae", "text_encoder", "scheduler"), as a dict."""
    if part not in SD15_PARTS:
        raise InvalidInputError(f"unknown SD 1.5 part '{part}'; choose from {', '.join(SD15_PARTS)}")
    folder = resources.files("arpo").joinpath(*CONFIG_PACKAGE_DIR)
    return json.loads(folder.joinpath(f"{part}.json").read_text(encoding="utf-8"))


def build_sd15_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_config(sd15_config("unet"))


def build_sd15_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_config(sd15_config("vae"))


def build_sd15_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    settings = {key: value for key, value in sd15_config("text_encoder").items() if not key.startswith("_")}
    return CLIPTextModel(CLIPTextConfig(**settings)).eval()


def build_sd15_scheduler():
    from diffusers import PNDMScheduler

    return PNDMScheduler.from_config(sd15_config("scheduler"))


def sd15_text_to_image(workload: Workload, device, dtype, *, low_vram: bool = False):
    """SD 1.5's pipeline with random weights, built directly in `dtype` on `device` (in CPU memory,
    taking turns on `device`, when `low_vram`), behind TextToImage."""
    import torch
    from diffusers import StableDiffusionPipeline

    from arpo.tools.accelerator_turns import HOME, turns_on
    from arpo.tools.clip_tokenizer import offline_clip_tokenizer
    from arpo.tools.pipeline_placement import PipelinePlacement
    from arpo.tools.text_to_image import TextToImage

    with torch.random.fork_rng(devices=[]), _building_in(HOME if low_vram else device, dtype):
        torch.manual_seed(workload.seed)
        pipeline = StableDiffusionPipeline(
            vae=build_sd15_vae(),
            text_encoder=build_sd15_text_encoder(),
            tokenizer=offline_clip_tokenizer(),
            unet=build_sd15_unet(),
            scheduler=build_sd15_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            image_encoder=None,
            requires_safety_checker=False,
        )
    return TextToImage(
        pipeline,
        name="sd15-architecture (random weights)",
        steps=workload.denoise_steps,
        height=workload.resolution,
        width=workload.resolution,
        placement=PipelinePlacement(pipeline, turns_on(device), low_vram=low_vram),
    )


def vit_l14_scorer(device, seed: int = 0, *, low_vram: bool = False):
    """open_clip's ViT-L-14 as the default scorer runs it (OpenAI's QuickGELU, float32), random weights."""
    import open_clip
    import torch

    from arpo.tools.accelerator_turns import HOME
    from arpo.tools.clip_scorer import ClipScorer

    built_on = HOME if low_vram else device
    with torch.random.fork_rng(devices=[]), _building_in(built_on, torch.float32):
        torch.manual_seed(seed)
        model, _, preprocess = open_clip.create_model_and_transforms(
            SCORER_ARCHITECTURE, pretrained=None, force_quick_gelu=True, device=built_on
        )
    description = {"model": SCORER_ARCHITECTURE, "pretrained": None, "random_weights_seed": seed}
    return ClipScorer(
        model,
        preprocess,
        open_clip.get_tokenizer(SCORER_ARCHITECTURE),
        name=f"{SCORER_ARCHITECTURE}-random-seed{seed}",
        device=device,
        description=description,
        low_vram=low_vram,
    )


def real_shape_stack(workload: Workload, device, dtype, *, low_vram: bool = False):
    """The model stack: SD 1.5 and ViT-L-14 at full size; the (unused) captioner tiny."""
    from arpo.tools.captioner import Captioner
    from arpo.tools.model_stack import ModelStack

    return ModelStack(
        name="sd15-architecture",
        text_to_image=sd15_text_to_image(workload, device, dtype, low_vram=low_vram),
        clip=vit_l14_scorer(device, workload.seed, low_vram=low_vram),
        captioner=Captioner.tiny(),
        is_tiny=True,  # random weights throughout: nothing it recovers means anything
        low_vram=low_vram,
    )


def tiny_stack(workload: Workload, *, low_vram: bool = False):
    """The tiny test models, for `--smoke`: the same timing path in seconds."""
    from arpo.tools.captioner import Captioner
    from arpo.tools.clip_scorer import ClipScorer
    from arpo.tools.model_stack import ModelStack
    from arpo.tools.text_to_image import TextToImage

    text_to_image = TextToImage.tiny(seed=workload.seed, low_vram=low_vram)
    text_to_image.steps = workload.denoise_steps
    text_to_image.height = text_to_image.width = workload.resolution
    clip = ClipScorer.tiny(seed=workload.seed, low_vram=low_vram)
    return ModelStack("tiny", text_to_image, clip, Captioner.tiny(low_vram=low_vram), is_tiny=True, low_vram=low_vram)


@contextmanager
def _building_in(device, dtype) -> Iterator[None]:
    """New parameters are created on `device` in `dtype`, so a half-precision stack never holds a
    float32 copy (which would set the peak memory) and a GPU stack initialises on the GPU."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def parameter_count(module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


# ---- what is timed -------------------------------------------------------------------------------------


def time_arpo_iteration(models, workload: Workload) -> dict[str, Any]:
    """One iteration of the loop's graph with the offline brain, stopped after `select`."""
    from arpo import SAMPLE_IMAGE
    from arpo.agents.offline_proposer import OfflineProposer
    from arpo.agents.proposal import ProposalRequest
    from arpo.core.run_config import RunConfig
    from arpo.graphs.builder import build_arpo_graph
    from arpo.graphs.invocation import build_context, initial_input, open_graph, start_run, stream_updates
    from arpo.storage.history import History
    from arpo.tools.phrase_bank import load_phrase_bank
    from arpo.tools.reference_image import load_reference_image

    history = History.open()
    config = RunConfig(
        models=models.name, steps=1, seed=workload.seed, initial_prompt=START_PROMPT, refine="none",
        low_vram=models.low_vram,
    )
    context = build_context(config, history, models=models)
    proposer = OfflineProposer(models.clip, max_phrases_per_bank=workload.phrases_per_bank)
    context.offline_proposer = proposer  # replaces the whole-bank proposer the context would build
    handle = start_run(history, config, load_reference_image(SAMPLE_IMAGE), context)

    started = time.perf_counter()
    reference = context.reference(handle.reference_sha256)
    reference_s = time.perf_counter() - started
    started = time.perf_counter()
    proposer.propose(ProposalRequest(current_prompt=START_PROMPT), reference.embedding)  # embeds the banks
    index_s = time.perf_counter() - started
    banks = load_phrase_bank(max_phrases_per_bank=workload.phrases_per_bank)
    embedded = sum(len(phrases) for phrases in banks.values())

    def one_iteration(checkpointer):
        return build_arpo_graph().compile(checkpointer=checkpointer, interrupt_after=["select"], name="arpo")

    rendered_s = models.text_to_image.forward_seconds
    with open_graph(handle, one_iteration) as (graph, _thread):
        stream_updates(handle, graph, initial_input(handle))
    timings = context.telemetry.timings
    nodes = {t.node: round(t.wall_s, 3) for t in timings if t.iteration == 0 and t.node != "initialize"}
    selection = [t for t in timings if t.node == "select"]
    candidates = history.get_run(handle.run_id).iterations_detail[0].candidates
    return {
        "arpo_iteration_s": round(sum(nodes.values()), 3),
        "arpo_nodes_s": nodes,
        "generation_s": round(models.text_to_image.forward_seconds - rendered_s, 3),
        "candidates": len(candidates),
        "selection_clip_text_passes": selection[0].clip_text_passes if selection else 0,
        "phrase_bank_phrases_embedded": embedded,
        "phrase_index_build_s": round(index_s, 3),
        "reference_embedding_s": round(reference_s, 3),
    }


class _StepsTimed(Exception):
    """Raised from `on_step` once the wanted steps are recorded: the rest of the inversion is not timed."""


def time_inversion(method: str, models, workload: Workload) -> dict[str, Any]:
    """Seconds per optimisation step of PH2P or EDITOR, through the method's public `invert`."""
    from arpo import SAMPLE_IMAGE
    from arpo.tools.inversion.base import InversionBudget
    from arpo.tools.reference_image import load_reference_image

    budget = InversionBudget(max_steps=workload.inversion_steps)
    inverter = _inverter(method, workload, budget)
    reference = load_reference_image(SAMPLE_IMAGE).image
    steps = []

    def on_step(step) -> None:
        if step.details.get("phase", "optimisation") == "embedding-to-text":
            return
        steps.append(step)
        if len(steps) >= workload.inversion_steps:
            raise _StepsTimed

    try:
        inverter.invert(reference, models, seed=workload.seed, budget=budget, on_step=on_step)
    except _StepsTimed:
        pass
    last = steps[-1] if steps else None
    return {
        f"{method}_step_s": _seconds_per_step([step.seconds for step in steps]),
        f"{method}_first_step_s": round(steps[0].seconds, 3) if steps else None,
        f"{method}_steps_timed": len(steps),
        f"{method}_step_stamps_s": [round(step.seconds, 4) for step in steps],
        f"{method}_loss": None if last is None else last.loss,
        f"{method}_step_details": {} if last is None else _plain(last.details),
    }


def _inverter(method: str, workload: Workload, budget):
    if method == "ph2p":
        from arpo.tools.inversion.ph2p import Ph2pInverter

        options = {} if workload.ph2p_lbfgs_iterations is None else {"lbfgs_iterations": workload.ph2p_lbfgs_iterations}
        return Ph2pInverter(budget=budget, **options)
    if method == "editor":
        from arpo.tools.inversion.editor import EditorInverter

        steps = workload.editor_denoising_steps
        options = {} if steps is None else {"denoising_steps": steps}
        return EditorInverter(budget=budget, initial_prompt=START_PROMPT, **options)
    raise InvalidInputError(f"no step benchmark for inversion method '{method}'")


def _plain(details: dict) -> dict:
    """Only the JSON-plain values of a step's details."""
    return {key: value for key, value in details.items() if isinstance(value, (str, int, float, bool, type(None)))}


# ---- the whole benchmark -------------------------------------------------------------------------------


def run_benchmark(models, workload: Workload, *, device, dtype_name: str, stack: str) -> dict[str, Any]:
    """Every figure of one placement of the models, as plain JSON values."""
    import diffusers
    import torch

    pipeline = models.text_to_image.pipeline
    report: dict[str, Any] = {
        "stack": stack,
        "device": str(device),
        "dtype": dtype_name,
        **asdict(workload),
        "scheduler": type(pipeline.scheduler).__name__,
        "guidance_scale": models.text_to_image.guidance_scale,
        "unet_parameters": parameter_count(pipeline.unet),
        "vae_parameters": parameter_count(pipeline.vae),
        "text_encoder_parameters": parameter_count(pipeline.text_encoder),
        "clip_scorer": models.clip.name,
        "clip_scorer_parameters": parameter_count(models.clip.model),
        "torch_version": torch.__version__,
        "diffusers_version": diffusers.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    report |= measure_placement(models, workload, device)
    report["notes"] = _notes(workload) + flag_non_finite(report)
    return report


def measure_placement(models, workload: Workload, device) -> dict[str, Any]:
    """The timed work on one stack, with its peak memory per phase and the models it moved."""
    peaks = PhasePeaks(device)
    moves_before = models.turns.moves
    figures: dict[str, Any] = {"placement": placement_name(models)}
    with peaks.phase("arpo_iteration"):
        _progress(f"timing one ARPO iteration ({figures['placement']} placement)")
        figures |= time_arpo_iteration(models, workload)
    for method in ("ph2p", "editor"):
        with peaks.phase(method):
            _progress(f"timing {method} ({workload.inversion_steps} step(s))")
            figures |= time_inversion(method, models, workload)
    return figures | {
        "peak_memory_mb": peaks.peak_mb,
        "peak_memory_kind": peaks.kind,
        "peak_memory_by_phase_mb": peaks.allocated_mb,
        "peak_reserved_by_phase_mb": peaks.reserved_mb or None,
        "accelerator_moves": models.turns.moves - moves_before,
    }


def placement_name(models) -> str:
    return PLACEMENTS[1] if models.low_vram else PLACEMENTS[0]


def compare_placements(report: dict[str, Any], later: dict[str, Any]) -> None:
    """Add a second placement's figures to `report` (the first's), with both peaks side by side.

    On the CPU the process's peak RSS cannot be reset, so a later placement's figure would be the
    earlier one's: it is left out rather than reported as if it were its own."""
    if later["peak_memory_kind"] != CUDA_KIND:
        later |= {"peak_memory_mb": None, "peak_memory_by_phase_mb": {},
                  "peak_memory_kind": "not measured: the process's peak RSS covers the placement before it"}
    flag_non_finite(later)
    first = report["placement"]
    report["by_placement"] = {first: {key: report[key] for key in later if key in report}, later["placement"]: later}
    report["peak_memory_mb_by_placement"] = {
        name: figures["peak_memory_mb"] for name, figures in report["by_placement"].items()
    }
    report["notes"].append(f"top-level figures are the {first} placement's; by_placement holds each placement's")


def flag_non_finite(report: dict[str, Any]) -> list[str]:
    """Random weights in half precision can overflow; a step whose loss is not finite may end early
    (L-BFGS stops, a guarded step is skipped), so its time is not the real one: say so. The values
    become None, so the JSON stays strict."""
    notes = []
    for method in ("ph2p", "editor"):
        loss = report.get(f"{method}_loss")
        if loss is not None and not _finite(loss):
            notes.append(f"{method}'s loss was not finite with these random weights: its step time may be too short")
            report[f"{method}_loss"] = None
        details = report.get(f"{method}_step_details", {})
        for key, value in details.items():
            if isinstance(value, float) and not math.isfinite(value):
                details[key] = None
    return notes


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _notes(workload: Workload) -> list[str]:
    step_rule = (
        "inversion step times are the mean of the steps after the first"
        if workload.inversion_steps > 1
        else "inversion step times are the first step, setup (reference VAE encoding, prompt encoding) included"
    )
    return [
        "random weights: timings and memory are the real models', images and prompts mean nothing",
        f"offline proposer restricted to the first {workload.phrases_per_bank} phrases of each phrase bank "
        "(embedded once, before the iteration: phrase_index_build_s)",
        f"{workload.denoise_steps} denoising steps per generated image",
        step_rule,
        "PH2P's final re-rendering and EDITOR's embedding-to-text search are not run",
        "wall-clock figures on a shared machine are noisy",
    ]


def format_table(report: dict[str, Any]) -> str:
    """The report as a two-column table, notes last."""
    rows = [
        ("stack", report["stack"]),
        ("device / dtype", f"{report['device']} / {report['dtype']} ({report['torch_threads']} torch threads)"),
        ("resolution", f"{report['resolution']} px, {report['denoise_steps']} denoising steps, {report['scheduler']}"),
        ("parameters", f"UNet {report['unet_parameters']:,}, text encoder {report['text_encoder_parameters']:,}, "
         f"VAE {report['vae_parameters']:,}, CLIP scorer {report['clip_scorer_parameters']:,}"),
        ("ARPO iteration", f"{report['arpo_iteration_s']:.2f} s  nodes: "
         + ", ".join(f"{node} {seconds:.2f}" for node, seconds in report["arpo_nodes_s"].items())),
        ("  of which rendering", f"{report['generation_s']:.2f} s"),
        ("  phrase index (once)",
         f"{report['phrase_index_build_s']:.2f} s for {report['phrase_bank_phrases_embedded']} phrases"),
        ("PH2P step", _seconds(report["ph2p_step_s"]) + f"  (first step {_seconds(report['ph2p_first_step_s'])}; "
         f"L-BFGS iterations: {report['ph2p_lbfgs_iterations'] or 'PH2P default'})"),
        ("EDITOR step", _seconds(report["editor_step_s"]) + f"  (first step {_seconds(report['editor_first_step_s'])}; "
         f"denoising steps: {report['editor_denoising_steps'] or 'EDITOR default'})"),
        ("placement", f"{report['placement']} ({report['accelerator_moves']} model moves on the device)"),
        ("peak memory", _peak(report)),
        *[(f"  {name} placement", _placement_summary(figures)) for name, figures in report.get("by_placement", {}).items()],
        *_speedup_rows(report),
        ("versions", f"torch {report['torch_version']}, diffusers {report['diffusers_version']}"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines + [f"note: {note}" for note in report["notes"]])


_STARTED = time.perf_counter()


def _progress(message: str) -> None:
    """What the benchmark is doing, on stderr (a CPU run takes minutes; stdout stays the report)."""
    print(f"[{time.perf_counter() - _STARTED:7.1f} s] {message}", file=sys.stderr, flush=True)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _speedup_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    if "render_s_by_speedup" not in report:
        return []
    rows = [("render s by speedup", ", ".join(f"{name} {seconds:.3f}" for name, seconds in report["render_s_by_speedup"].items()))]
    if "compile_first_render_s" in report:
        rows.append(("  first compiled render", _seconds(report["compile_first_render_s"])))
    rows.append(("  text-encoder memory", f"saves {report['text_encodings_remembered_per_render']} forward(s) of "
                 f"{report['text_encoder_forward_s']:.4f} s a render"))
    return rows


def _placement_summary(figures: dict[str, Any]) -> str:
    return (
        f"iteration {_seconds(figures['arpo_iteration_s'])}, PH2P step {_seconds(figures['ph2p_step_s'])}, "
        f"EDITOR step {_seconds(figures['editor_step_s'])}, {figures['accelerator_moves']} moves; {_peak(figures)}"
    )


def _peak(figures: dict[str, Any]) -> str:
    if figures["peak_memory_mb"] is None:
        return figures["peak_memory_kind"]
    phases = ", ".join(f"{phase} {mb:.0f}" for phase, mb in figures["peak_memory_by_phase_mb"].items())
    return f"{figures['peak_memory_mb']:.1f} MiB ({figures['peak_memory_kind']}; by phase: {phases})"


# ---- command line --------------------------------------------------------------------------------------


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m arpo.eval.real_shape_benchmark",
        description="Seconds per ARPO iteration, PH2P step and EDITOR step, and peak memory, with SD 1.5's "
        "real architecture and ViT-L-14 (random weights, nothing downloaded).",
    )
    parser.add_argument("--resolution", type=int, help="image side in pixels, a multiple of 64 (default 256)")
    parser.add_argument("--dtype", help="float32, float16 or bfloat16 (default: float16 on CUDA, float32 on the CPU)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: the best available)")
    parser.add_argument("--denoise-steps", type=int, default=None, help="denoising steps per image (default 10)")
    parser.add_argument("--phrases-per-bank", type=int, help="phrases embedded per phrase bank (default 100)")
    parser.add_argument("--inversion-steps", type=int, default=None, help="PH2P and EDITOR steps timed (default 2)")
    parser.add_argument("--ph2p-lbfgs-iterations", type=int, default=None, help="default: PH2P's own (20)")
    parser.add_argument("--editor-denoising-steps", type=int, default=None, help="default: EDITOR's own (5)")
    parser.add_argument("--seed", type=int, default=0)
    quick = ", ".join(f"{name}={value}" for name, value in QUICK.items())
    parser.add_argument("--quick", action="store_true", help=f"CPU-sized work: {quick}")
    smoke = "the tiny test models, on the CPU in float32 (checks the code path in seconds)"
    parser.add_argument("--smoke", action="store_true", help=smoke)
    parser.add_argument(
        "--placement", choices=(*PLACEMENTS, "both"), default=PLACEMENTS[0],
        help="where the models wait between uses: default (on the device), low-vram (as --low-vram: in CPU "
        "memory, one on the device at a time) or both, one after the other (default: default)",
    )
    parser.add_argument(
        "--speedups", nargs="+", choices=SPEEDUP_STEPS, default=(),
        help="also time one render after each of these, added one on top of the other in this order: attention "
        "(classic, then scaled-dot-product), channels-last, compile (see eval/render_speedups.py)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser.parse_args(argv)


# Workload fields a person may set, each of which must be at least 1 when set.
_AT_LEAST_ONE = (
    "denoise_steps", "phrases_per_bank", "inversion_steps", "ph2p_lbfgs_iterations", "editor_denoising_steps"
)


def workload_from(arguments: argparse.Namespace) -> Workload:
    """The workload the flags ask for: --quick's values under explicit flags, defaults under both."""
    chosen = QUICK.copy() if arguments.quick else {}
    for name in ("resolution", "seed", *_AT_LEAST_ONE):
        value = getattr(arguments, name)
        if value is not None:
            chosen[name] = value
    if arguments.smoke:
        chosen.setdefault("resolution", 64)  # the tiny pipeline's own size
    workload = Workload(**chosen)
    if workload.resolution < 64 or workload.resolution % 64:
        raise InvalidInputError(f"--resolution must be a positive multiple of 64, not {workload.resolution}")
    for name in _AT_LEAST_ONE:
        value = getattr(workload, name)
        if value is not None and value < 1:
            raise InvalidInputError(f"--{name.replace('_', '-')} must be at least 1, not {value}")
    return workload


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    try:
        report = _run(arguments)
    except ArpoError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    print(json.dumps(report, indent=2) if arguments.json else format_table(report))
    return 0


def _run(arguments: argparse.Namespace) -> dict[str, Any]:
    import torch

    from arpo.tools.devices import dtype_name as name_of
    from arpo.tools.devices import pick_device, pick_dtype

    workload = workload_from(arguments)
    device = pick_device(arguments.device)
    dtype = pick_dtype(device, arguments.dtype)
    dtype_name = name_of(dtype)
    placements = PLACEMENTS if arguments.placement == "both" else (arguments.placement,)
    if arguments.smoke:
        device, dtype_name = torch.device("cpu"), "float32"
    stack = "tiny (smoke)" if arguments.smoke else "sd15-architecture"
    with tempfile.TemporaryDirectory(prefix="arpo-real-shape-") as home:
        previous_home = os.environ.get("ARPO_HOME")
        os.environ["ARPO_HOME"] = home  # keep benchmark runs and caches out of the person's history
        try:
            report: dict[str, Any] = {}
            for placement in placements:
                models = _stack_for(arguments.smoke, workload, device, dtype, low_vram=placement == PLACEMENTS[1])
                if not report:
                    report = run_benchmark(models, workload, device=device, dtype_name=dtype_name, stack=stack)
                else:
                    compare_placements(report, measure_placement(models, workload, device))
                # On the first placement's stack (compile changes it for good; the next placement builds its own).
                if arguments.speedups and placement == placements[0]:
                    _progress(f"timing renders with {', '.join(arguments.speedups)}")
                    report |= time_speedups(models.text_to_image, tuple(arguments.speedups))
                models.turns.empty()
                del models
                _release_device_memory()
            return report
        finally:
            if previous_home is None:
                os.environ.pop("ARPO_HOME", None)
            else:
                os.environ["ARPO_HOME"] = previous_home


def _stack_for(smoke: bool, workload: Workload, device, dtype, *, low_vram: bool):
    from arpo.tools.devices import dtype_name

    if smoke:
        return tiny_stack(workload, low_vram=low_vram)
    where = "in CPU memory, taking turns on" if low_vram else "on"
    _progress(f"building SD 1.5 and ViT-L-14 with random weights {where} {device} in {dtype_name(dtype)}")
    return real_shape_stack(workload, device, dtype, low_vram=low_vram)


def _release_device_memory() -> None:
    """Free a measured stack's device memory before the next placement is built and measured."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
