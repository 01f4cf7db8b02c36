"""--low-vram on the tiny stack: whose turn it is at every forward pass, the same results as without it,
the CLI end to end, the regressor's turns and the benchmark's two placements.

On this CPU-only machine the stack is given a device of its own, "cpu:0": moving a tensor there is free
and changes nothing, but the name differs from "cpu" (home), and a spy on `torch.nn.Module.to` keeps a
ledger of where every large model was last sent. Each forward pass then checks what would fail on a
GPU: the model that runs is on the device, and no other model's weights are there with it.
"""

import json

import numpy as np
import pytest
import torch
from cli_harness import SAMPLE_IMAGE, run_arpo
from PIL import Image

from arpo.core.run_config import RunConfig
from arpo.eval import real_shape_benchmark as bench
from arpo.eval.peak_memory import CUDA_KIND, PhasePeaks
from arpo.tools.accelerator_turns import AcceleratorTurns, Stay
from arpo.tools.inversion.base import InversionBudget
from arpo.tools.inversion.editor import EditorInverter
from arpo.tools.inversion.pez import PezInverter
from arpo.tools.inversion.ph2p import Ph2pInverter
from arpo.tools.model_stack import build_model_stack, model_stack_for, model_stack_key
from arpo.tools.pipeline_placement import GENERATION_SEAT, WHOLE_SEAT, _has_offload_hooks

DEVICE = "cpu:0"
PIPELINE_PARTS = ("text_encoder", "unet", "vae")
SEAT_OF = {"text_encoder": "pipeline", "unet": "pipeline", "vae": "pipeline", "clip": "clip", "captioner": "captioner"}


def noise_image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((48, 48, 3)) * 255).astype("uint8"))


class DeviceLedger:
    """Where each large model was last sent, read from every `.to()` call (torch's, diffusers',
    accelerate's offload hooks' and transformers' all end in `torch.nn.Module.to`)."""

    def __init__(self, monkeypatch, models: dict[str, torch.nn.Module]):
        self.where = {name: "cpu" for name in models}
        names = {id(module): name for name, module in models.items()}
        real_to = torch.nn.Module.to

        def to(module, *args, **kwargs):
            name = names.get(id(module))
            device = torch._C._nn._parse_to(*args, **kwargs)[0] if name is not None else None
            if device is not None:
                self.where[name] = str(device)
            return real_to(module, *args, **kwargs)

        monkeypatch.setattr(torch.nn.Module, "to", to)

    def on_device(self) -> set[str]:
        return {name for name, place in self.where.items() if place == DEVICE}


@pytest.fixture
def watched(monkeypatch):
    """A low-VRAM tiny stack on its own device, its ledger, and one record per forward pass of a large
    model: (model, the turn's holder, the models then on the device, offload hooks installed)."""
    turns = AcceleratorTurns(DEVICE)
    stack = build_model_stack("tiny", low_vram=True, turns=turns)
    pipeline = stack.text_to_image.pipeline
    ledger = DeviceLedger(monkeypatch, {
        "text_encoder": pipeline.text_encoder, "unet": pipeline.unet, "vae": pipeline.vae,
        "clip": stack.clip.model, "captioner": stack.captioner.model,
    })
    forwards = []
    # The modules whose forward runs when each model computes (the VAE and the captioner are called
    # through methods of their own, so their inner networks are the ones watched).
    watched_modules = {
        "text_encoder": [pipeline.text_encoder], "unet": [pipeline.unet],
        "vae": [pipeline.vae.encoder, pipeline.vae.decoder],
        "clip": [stack.clip.model.visual, stack.clip.model.transformer],
        "captioner": [stack.captioner.model.vision_model, stack.captioner.model.language_model],
    }
    for name, modules in watched_modules.items():
        for module in modules:
            module.register_forward_hook(
                lambda _module, _inputs, _output, name=name: forwards.append(
                    (name, turns.holder, ledger.on_device(), _has_offload_hooks(pipeline))
                )
            )
    return stack, ledger, forwards


def check_one_model_per_forward(forwards):
    """Every forward ran on the device, in its own model's turn, with no other model's weights there."""
    assert forwards
    for name, holder, on_device, hooked in forwards:
        assert name in on_device, f"{name} ran while away from the device"
        assert {SEAT_OF[other] for other in on_device} == {SEAT_OF[name]}, f"{name} shared the device: {on_device}"
        if SEAT_OF[name] == "pipeline":
            assert holder in (GENERATION_SEAT, WHOLE_SEAT)
            if holder == WHOLE_SEAT:  # differentiating: every part there, no hook to send one home mid-graph
                assert set(PIPELINE_PARTS) <= on_device and not hooked
            else:
                assert hooked  # generating: diffusers' offload brings each part as the call reaches it
        else:
            assert holder == name


def test_the_loops_models_take_turns_one_at_a_time(watched):
    stack, ledger, forwards = watched
    image = noise_image(0)
    stack.captioner.caption(image)
    # Each of the scorer's calls right after a generation, when the pipeline holds the device.
    generated = stack.text_to_image.generate("a red fox", seed=1)
    stack.clip.encode_texts(["a red fox", "a blue whale"])
    stack.text_to_image.generate("a blue whale", seed=2)
    stack.clip.encode_images([generated, image])
    stack.captioner.caption(noise_image(1))
    stack.text_to_image.generate("a blue whale", seed=3)
    check_one_model_per_forward(forwards)
    ran = [name for name, *_ in forwards]
    assert {"captioner", "text_encoder", "unet", "vae", "clip"} <= set(ran)
    # After the last generation the pipeline's parts are all home again; the device is empty.
    assert ledger.on_device() == set() and stack.turns.holder == GENERATION_SEAT


def test_inverters_hold_what_they_differentiate_through(watched):
    stack, ledger, forwards = watched
    reference = noise_image(3)
    budget = InversionBudget(max_steps=1)
    Ph2pInverter(budget=budget, lbfgs_iterations=1, rescored=1, ranking_timesteps=1).invert(reference, stack)
    whole = [name for name, holder, *_ in forwards if holder == WHOLE_SEAT]
    assert {"text_encoder", "unet", "vae"} <= set(whole)  # the optimisation, all parts together
    assert "clip" in [name for name, *_ in forwards]  # the re-scoring, in CLIP's own turn inside PH2P's
    EditorInverter(budget=budget, denoising_steps=1).invert(reference, stack)  # captions inside its turn
    PezInverter(budget=budget).invert(reference, stack)
    check_one_model_per_forward(forwards)
    assert stack.turns.holder == "clip" and ledger.on_device() == {"clip"}


@pytest.fixture(scope="module")
def stacks():
    return build_model_stack("tiny"), build_model_stack("tiny", low_vram=True)


def test_results_are_identical_with_and_without_low_vram(stacks):
    default, low_vram = stacks
    assert not default.low_vram and low_vram.low_vram
    for seed in (0, 7):
        assert (default.text_to_image.generate("a lighthouse at dusk", seed).tobytes()
                == low_vram.text_to_image.generate("a lighthouse at dusk", seed).tobytes())
    image = noise_image(5)
    assert default.captioner.caption(image) == low_vram.captioner.caption(image)
    assert torch.equal(default.clip.encode_images([image]), low_vram.clip.encode_images([image]))
    assert torch.equal(default.clip.encode_texts(["oil painting"]), low_vram.clip.encode_texts(["oil painting"]))
    budget = InversionBudget(max_steps=2)
    inverted = [Ph2pInverter(budget=budget, lbfgs_iterations=1, rescored=1).invert(image, stack, seed=3) for stack in stacks]
    assert inverted[0].prompt == inverted[1].prompt and inverted[0].score == inverted[1].score


@pytest.mark.parametrize("family", ["tiny-sdxl", "tiny-pixart"])
def test_every_familys_offload_renders_the_same_image(family):
    """SDXL's two text encoders and PixArt's transformer are offloaded in their pipelines' own order."""
    default, low_vram = build_model_stack(family), build_model_stack(family, low_vram=True)
    first = low_vram.text_to_image.generate("a harbour at night", 4)
    assert _has_offload_hooks(low_vram.text_to_image.pipeline)
    assert first.tobytes() == default.text_to_image.generate("a harbour at night", 4).tobytes()


def test_default_placement_is_unchanged(stacks):
    default, _ = stacks
    assert default.turns.turn(default.text_to_image.placement._generation).__class__.__name__ == "nullcontext"
    assert not _has_offload_hooks(default.text_to_image.pipeline)
    assert default.clip._seat.stay is Stay.RESIDENT and default.captioner._seat.stay is Stay.RESIDENT  # on the CPU
    described = default.describe()
    assert described["low_vram"] is False and described["text_to_image"]["low_vram"] is False


def test_low_vram_sets_the_memory_savers_of_the_pipeline(stacks):
    _, low_vram = stacks
    pipeline = low_vram.text_to_image.pipeline
    assert pipeline.vae.use_tiling
    # SDPA attention is kept: diffusers warns that slicing on top of it saves nothing and is slower.
    assert type(next(iter(pipeline.unet.attn_processors.values()))).__name__ == "AttnProcessor2_0"
    described = low_vram.describe()
    assert described["low_vram"] and described["clip"]["low_vram"] and described["captioner"]["rests_on_cpu"]


def test_attention_is_sliced_where_it_would_build_whole_matrices():
    from diffusers.models.attention_processor import AttnProcessor

    from arpo.tools.pipeline_placement import PipelinePlacement
    from arpo.tools.text_to_image import TextToImage

    pipeline = TextToImage.tiny().pipeline
    pipeline.unet.set_attn_processor(AttnProcessor())
    PipelinePlacement(pipeline, AcceleratorTurns(DEVICE), low_vram=True)
    assert {type(processor).__name__ for processor in pipeline.unet.attn_processors.values()} == {"SlicedAttnProcessor"}


def test_arpo_invert_with_low_vram_runs_the_tiny_loop_and_keeps_the_choice(capsys, arpo_home):
    tiny = ("invert", SAMPLE_IMAGE, "--models", "tiny", "--brain", "offline", "--steps", "1", "--json")
    low = run_arpo(capsys, *tiny, "--low-vram")
    assert low.exit_code == 0, low.stderr
    plain = run_arpo(capsys, *tiny)
    assert plain.exit_code == 0, plain.stderr
    low_result, plain_result = low.json(), plain.json()
    assert [it["prompt"] for it in low_result["iterations"]] == [it["prompt"] for it in plain_result["iterations"]]
    assert [it["clip_i"] for it in low_result["iterations"]] == [it["clip_i"] for it in plain_result["iterations"]]

    from arpo.storage.history import History

    stored = History.open().get_run(low_result["run_id"]).config
    assert stored["low_vram"] is True and stored["model_details"]["low_vram"] is True
    resumed = RunConfig.model_validate(stored)  # what `arpo resume` rebuilds its models from
    assert resumed.low_vram and model_stack_key(resumed) != model_stack_key(resumed.model_copy(update={"low_vram": False}))
    assert model_stack_for(resumed).low_vram


def test_the_environment_can_ask_for_low_vram(monkeypatch):
    from arpo.core.settings import ArpoSettings, ModelOptions

    monkeypatch.setenv("ARPO_LOW_VRAM", "1")
    assert ArpoSettings.read().run_config().low_vram
    assert not ArpoSettings.read().run_config(ModelOptions(low_vram=False)).low_vram


def test_regressor_checkpoints_take_their_turns(tmp_path):
    from arpo.tools.regressor.backbones import TinyConvNet
    from arpo.tools.regressor.checkpoint import LoadedRegressor
    from arpo.tools.regressor.inverter import RegressorInverter
    from arpo.tools.regressor.model import PromptRegressor, RegressorConfig
    from arpo.tools.regressor.prompt_bank import PromptBank

    def loaded(seed):
        config = RegressorConfig(backbone="tiny", target_space="tiny", embedding_dim=8, vocabulary_size=0, seed=seed)
        return LoadedRegressor(PromptRegressor(TinyConvNet(seed=seed), config), config, None, None, tmp_path)

    bank = PromptBank(["a red circle", "a blue square"], np.random.default_rng(0).random((2, 8)), "tiny")
    turns = AcceleratorTurns(DEVICE)
    low = RegressorInverter([loaded(0), loaded(1)], bank, low_vram=True, turns=turns)
    plain = RegressorInverter([loaded(0), loaded(1)], bank)
    image = noise_image(9)
    with turns.recording() as moves:
        embedding = low.embed([image])
    assert [(move.seat, move.device) for move in moves] == [
        ("regressor 0", DEVICE), ("regressor 0", "cpu"), ("regressor 1", DEVICE),
    ]
    np.testing.assert_array_equal(embedding, plain.embed([image]))


def test_benchmark_measures_both_placements():
    from contextlib import redirect_stdout
    from io import StringIO

    printed = StringIO()
    arguments = ["--smoke", "--quick", "--phrases-per-bank", "3", "--placement", "both", "--json"]
    with redirect_stdout(printed):
        assert bench.main(arguments) == 0
    report = json.loads(printed.getvalue())
    assert report["placement"] == "default" and set(report["by_placement"]) == {"default", "low-vram"}
    low = report["by_placement"]["low-vram"]
    assert low["accelerator_moves"] > 0 and report["accelerator_moves"] == 0
    assert low["arpo_iteration_s"] > 0 and low["ph2p_step_s"] > 0 and low["editor_step_s"] > 0
    # On the CPU the first placement's figure is the process's peak RSS, and the second has none.
    assert report["peak_memory_mb_by_placement"]["default"] > 0 and report["peak_memory_mb_by_placement"]["low-vram"] is None
    assert "not an accelerator measurement" in report["peak_memory_kind"]
    assert set(report["peak_memory_by_phase_mb"]) == set(bench.PHASES)
    assert "low-vram placement" in bench.format_table(report)


def test_cuda_peaks_are_reset_before_each_phase(monkeypatch):
    calls, allocated = [], iter([100 * 2**20, 300 * 2**20])
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append(("reset", str(device))))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: calls.append(("peak", str(device))) or next(allocated))
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 512 * 2**20)
    peaks = PhasePeaks("cuda:0")
    for phase in ("arpo_iteration", "ph2p"):
        with peaks.phase(phase):
            calls.append(("work", phase))
    assert calls == [("reset", "cuda:0"), ("work", "arpo_iteration"), ("peak", "cuda:0"),
                     ("reset", "cuda:0"), ("work", "ph2p"), ("peak", "cuda:0")]
    assert peaks.allocated_mb == {"arpo_iteration": 100.0, "ph2p": 300.0} and peaks.peak_mb == 300.0
    assert peaks.kind == CUDA_KIND and peaks.reserved_mb["ph2p"] == 512.0
