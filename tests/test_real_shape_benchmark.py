"""The real-shape benchmark: its configs are SD 1.5's architecture, and its timing path runs end to end.

The full-size models are only ever built on the meta device here (no memory, no arithmetic); the
timing code path itself runs on the tiny stack (`--smoke`).
"""

import json
import os
from fnmatch import fnmatch
from importlib import resources
from pathlib import Path

import pytest
import torch
from accelerate import init_empty_weights

from arpo.eval import real_shape_benchmark as bench

# Parameter counts of the released Stable Diffusion 1.5 components and of open_clip's ViT-L-14.
SD15_UNET_PARAMETERS = 859_520_964
SD15_VAE_PARAMETERS = 83_653_863
SD15_TEXT_ENCODER_PARAMETERS = 123_060_480
VIT_L14_PARAMETERS = 427_616_513
REPOSITORY = Path(__file__).resolve().parents[1]


def test_configs_build_sd15s_components_at_their_real_size():
    with init_empty_weights():
        unet = bench.build_sd15_unet()
        vae = bench.build_sd15_vae()
        text_encoder = bench.build_sd15_text_encoder()
    assert next(unet.parameters()).device.type == "meta"  # nothing was allocated
    assert bench.parameter_count(unet) == SD15_UNET_PARAMETERS
    assert bench.parameter_count(vae) == SD15_VAE_PARAMETERS
    assert bench.parameter_count(text_encoder) == SD15_TEXT_ENCODER_PARAMETERS
    assert unet.config.cross_attention_dim == text_encoder.config.hidden_size == 768
    assert unet.config.sample_size == 64 and vae.config.latent_channels == unet.config.in_channels == 4
    assert vae.config.scaling_factor == pytest.approx(0.18215)
    assert (text_encoder.config.num_hidden_layers, text_encoder.config.num_attention_heads) == (12, 12)
    assert text_encoder.config.max_position_embeddings == 77 and text_encoder.config.vocab_size == 49408


def test_scheduler_config_is_sd15s_pndm_schedule():
    scheduler = bench.build_sd15_scheduler()
    assert type(scheduler).__name__ == "PNDMScheduler"
    assert scheduler.config.skip_prk_steps and scheduler.config.steps_offset == 1
    assert float(scheduler.betas[0]) == pytest.approx(0.00085) and float(scheduler.betas[-1]) == pytest.approx(0.012)
    assert float(scheduler.betas[500]) < (0.00085 + 0.012) / 2  # scaled_linear, not linear


def test_assembled_pipeline_and_scorer_have_the_real_shapes_without_allocating():
    meta = torch.device("meta")
    text_to_image = bench.sd15_text_to_image(bench.Workload(resolution=512), meta, torch.float16)
    pipeline = text_to_image.pipeline
    assert type(pipeline).__name__ == "StableDiffusionPipeline"
    assert pipeline.unet.device.type == "meta" and pipeline.unet.dtype == torch.float16
    assert pipeline.text_encoder.dtype == torch.float16 and torch.get_default_dtype() == torch.float32
    assert pipeline.vae_scale_factor == 8 and (text_to_image.height, text_to_image.width) == (512, 512)
    assert text_to_image.token_budget() == 75 and text_to_image.steps == 10
    scorer = bench.vit_l14_scorer(meta)
    assert bench.parameter_count(scorer.model) == VIT_L14_PARAMETERS
    assert scorer.context_length == 77 and not scorer.is_tiny


def test_configs_ship_with_the_package():
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["arpo"]
    package = REPOSITORY / "arpo"
    configs = sorted(path.relative_to(package).as_posix() for path in (package / "configs").rglob("*.json"))
    assert {f"configs/sd15/{part}.json" for part in bench.SD15_PARTS} <= set(configs)
    assert all(any(fnmatch(config, pattern) for pattern in patterns) for config in configs)
    assert resources.files("arpo").joinpath("configs", "sd15", "unet.json").is_file()


def test_quick_sets_defaults_that_explicit_flags_override():
    workload = bench.workload_from(bench.parse_arguments(["--quick", "--denoise-steps", "5"]))
    assert workload.denoise_steps == 5
    assert workload.phrases_per_bank == bench.QUICK["phrases_per_bank"]
    assert workload.ph2p_lbfgs_iterations == bench.QUICK["ph2p_lbfgs_iterations"]
    plain = bench.workload_from(bench.parse_arguments([]))
    assert (plain.resolution, plain.denoise_steps, plain.ph2p_lbfgs_iterations) == (256, 10, None)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--resolution", "100"], "multiple of 64"),
        (["--inversion-steps", "0"], "--inversion-steps must be at least 1"),
        (["--device", "nonsense-device"], "Unknown device"),
        (["--device", "cpu", "--dtype", "float64"], "unknown dtype 'float64'"),
    ],
)
def test_bad_flags_fail_with_one_line_before_building_anything(arguments, message, capsys):
    assert bench.main(arguments) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1


@pytest.fixture(scope="module")
def smoke_report():
    """One smoke run (tiny models, the real timing path), shared by the checks on its output."""
    from contextlib import redirect_stdout
    from io import StringIO

    home_before = os.environ.get("ARPO_HOME")
    printed = StringIO()
    with redirect_stdout(printed):
        code = bench.main(["--smoke", "--quick", "--phrases-per-bank", "3", "--inversion-steps", "2",
                           "--speedups", "channels-last", "attention", "--json"])
    assert code == 0
    assert os.environ.get("ARPO_HOME") == home_before  # the benchmark's own temporary home is gone
    return json.loads(printed.getvalue())


def test_smoke_run_reports_every_figure(smoke_report):
    report = smoke_report
    for key in ("unet_parameters", "arpo_iteration_s", "ph2p_step_s", "editor_step_s", "peak_memory_mb",
                "resolution", "dtype", "device", "denoise_steps", "torch_version", "diffusers_version"):
        assert report[key] is not None, key
    assert report["stack"] == "tiny (smoke)" and report["scheduler"] == "PNDMScheduler"
    assert report["unet_parameters"] < 1_000_000 and report["peak_memory_mb"] > 0
    # The iteration ran through the loop's own nodes, and its time is theirs.
    assert set(report["arpo_nodes_s"]) == {"generate", "compare", "propose", "select"}
    assert report["arpo_iteration_s"] == pytest.approx(sum(report["arpo_nodes_s"].values()), abs=0.01)
    assert 0 < report["generation_s"] <= report["arpo_iteration_s"]
    assert report["candidates"] > 0 and report["selection_clip_text_passes"] >= 1  # one per round of selection
    # The offline proposer embedded only the documented subset of the phrase banks.
    assert report["phrases_per_bank"] == 3 and report["phrase_bank_phrases_embedded"] == 12
    assert any("first 3 phrases of each phrase bank" in note for note in report["notes"])
    # Two steps of each inversion were timed; the figure is the second one, without setup.
    for method in ("ph2p", "editor"):
        assert report[f"{method}_steps_timed"] == 2
        first, second = report[f"{method}_step_stamps_s"]
        assert report[f"{method}_first_step_s"] == pytest.approx(first, abs=1e-3)
        assert report[f"{method}_step_s"] == pytest.approx(second - first, abs=1e-3) and report[f"{method}_step_s"] > 0
    assert report["ph2p_lbfgs_iterations"] == 1 and report["editor_denoising_steps"] == 1


def test_speedups_are_timed_one_on_top_of_the_other(smoke_report):
    # In SPEEDUP_STEPS order whatever the order asked; compile was not asked for (a minute on a CPU).
    assert list(smoke_report["render_s_by_speedup"]) == ["classic-attention", "default", "+channels-last"]
    assert all(seconds > 0 for seconds in smoke_report["render_s_by_speedup"].values())
    assert "compile_first_render_s" not in smoke_report
    # Every render has a new prompt, so the text-encoder memory answers the empty negative prompt alone.
    assert smoke_report["text_encodings_remembered_per_render"] == 1.0 and smoke_report["text_encoder_forward_s"] > 0


def test_the_attention_speedup_leaves_scaled_dot_product_attention_on():
    from diffusers.models.attention_processor import AttnProcessor2_0

    from arpo.eval.render_speedups import time_speedups
    from arpo.tools.text_to_image import TextToImage

    t2i = TextToImage.tiny()
    time_speedups(t2i, ("attention",), renders=1)
    assert {type(processor) for processor in t2i.denoiser.attn_processors.values()} == {AttnProcessor2_0}


def test_table_names_each_figure(smoke_report):
    table = bench.format_table(smoke_report)
    for label in ("ARPO iteration", "PH2P step", "EDITOR step", "peak memory", "phrase index", "render s by speedup"):
        assert label in table
    assert f"{smoke_report['unet_parameters']:,}" in table


def test_a_non_finite_loss_is_flagged_and_kept_out_of_the_json():
    report = {"ph2p_loss": float("nan"), "ph2p_step_details": {"optimised_loss_after": float("inf"), "timestep": 3},
              "editor_loss": 0.5, "editor_step_details": {}}
    notes = bench.flag_non_finite(report)
    assert len(notes) == 1 and "ph2p" in notes[0]
    assert report["ph2p_loss"] is None and report["ph2p_step_details"] == {"optimised_loss_after": None, "timestep": 3}
    json.dumps(report, allow_nan=False)  # strict JSON
