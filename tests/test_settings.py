"""One configuration path: ARPO_* settings, then the option groups a person fills (flags, the web UI's
form, Studio's panel), merged by `ArpoSettings.run_config` into one RunConfig."""

from __future__ import annotations

import inspect

import pytest

from arpo.app.options import with_option_groups
from arpo.core.errors import InvalidInputError
from arpo.core.settings import ArpoSettings, BrainOptions, HistoryOptions, LoopOptions, ModelOptions
from cli_harness import run_arpo


@pytest.fixture(autouse=True)
def no_arpo_variables(monkeypatch):
    import os

    for name in [name for name in os.environ if name.startswith("ARPO_") and name != "ARPO_HOME"]:
        monkeypatch.delenv(name)


def test_a_chosen_option_wins_over_its_setting_and_a_role_option_over_the_shared_one(monkeypatch):
    monkeypatch.setenv("ARPO_BRAIN", "vllm")
    monkeypatch.setenv("ARPO_BASE_URL", "http://settings.example/v1")
    monkeypatch.setenv("ARPO_STEPS", "7")
    config = ArpoSettings.read().run_config(
        ModelOptions(models="tiny", scheduler=" DDIM ", dtype="bf16"),
        BrainOptions(llm_brain="offline", vlm_base_url="http://vlm.example/v1", max_tokens=50, llm_max_tokens=9),
        LoopOptions(seed=3),
    )
    assert (config.models, config.scheduler, config.dtype) == ("tiny", "ddim", "bfloat16")
    assert (config.vlm.provider, config.llm.provider) == ("vllm", "offline")
    assert config.vlm.base_url == "http://vlm.example/v1" and config.llm.base_url == "http://settings.example/v1"
    assert (config.vlm.max_tokens, config.llm.max_tokens) == (50, 9)
    assert (config.steps, config.seed) == (7, 3)  # the setting where nothing was chosen


def test_later_groups_go_over_earlier_ones_as_the_web_form_goes_over_the_ui_flags():
    flags = BrainOptions(brain="vllm", vlm="flag-vlm")
    form = BrainOptions(brain="offline")
    config = ArpoSettings.read().run_config(flags, form)
    assert config.vlm.provider == "offline" and config.vlm.model == "flag-vlm"


@pytest.mark.parametrize(
    ("choice", "flag"),
    [
        (lambda: BrainOptions.chosen(vlm_brain="psychic"), "--vlm-brain"),
        (lambda: ModelOptions.chosen(dtype="float8"), "--dtype"),
        (lambda: LoopOptions.chosen(steps=-2), "--steps"),
        (lambda: ArpoSettings.read().run_config(method="dalle"), "--method"),
    ],
)
def test_a_bad_choice_is_one_line_naming_its_flag(choice, flag):
    with pytest.raises(InvalidInputError, match=f"^invalid value for {flag}: "):
        choice()


def test_a_bad_setting_names_its_variable(monkeypatch, capsys, arpo_home):
    monkeypatch.setenv("ARPO_FRAMEWORK", "fancy")
    outcome = run_arpo(capsys, "invert", "missing.png")
    assert outcome.exit_code == 2
    assert outcome.stderr.strip() == "arpo: error: invalid value for ARPO_FRAMEWORK: Input should be 'vanilla' or 'enhanced'"


def test_fallbacks_fill_only_what_the_environment_leaves_unset(monkeypatch):
    monkeypatch.setenv("ARPO_MODELS", "sdxl")
    settings = ArpoSettings.read(models="tiny", brain="offline")
    assert (settings.models, settings.brain) == ("sdxl", "offline")


def test_studio_reads_the_same_settings_with_offline_fallbacks(monkeypatch):
    from arpo.graphs.studio import StudioSettings, run_config_for

    assert run_config_for(StudioSettings(), {}).models == "tiny"
    monkeypatch.setenv("ARPO_MODELS", "tiny-sdxl")
    monkeypatch.setenv("ARPO_FRAMEWORK", "enhanced")
    config = run_config_for(StudioSettings(brain="vllm"), {"steps": 2})
    assert (config.models, config.framework, config.vlm.provider, config.steps) == ("tiny-sdxl", "enhanced", "vllm", 2)


def test_every_field_of_a_group_becomes_one_flag_with_its_description_as_help():
    def command(image: str, models: ModelOptions, brains: BrainOptions, loop: LoopOptions, db: str | None = None):
        return models, brains, loop

    wrapped = with_option_groups(command)
    flags = set(inspect.signature(wrapped).parameters)
    expected = {name for group in (ModelOptions, BrainOptions, LoopOptions) for name in group.model_fields} | {"image", "db"}
    assert flags == expected
    flag_values = {name: None for name in expected - {"image", "db"}} | {"models": "tiny", "llm_brain": "vllm"}
    models, brains, loop = wrapped(image="x", db=None, **flag_values)
    assert models.models == "tiny" and brains.llm_brain == "vllm" and loop == LoopOptions()


def test_commands_share_the_groups_so_batch_takes_the_model_flags_invert_takes(capsys):
    invert_help = run_arpo(capsys, "invert", "--help").stdout
    batch_help = run_arpo(capsys, "batch", "--help").stdout
    for flag in ("--clip-model", "--captioner", "--device", "--vlm-max-tokens", "--brain-seed", "--framework"):
        assert flag in invert_help and flag in batch_help, flag


def test_the_history_flags_go_over_their_settings(monkeypatch):
    monkeypatch.setenv("ARPO_DB", "sqlite:///from-settings.db")
    monkeypatch.setenv("ARPO_IMAGES", "/settings/images")
    where = ArpoSettings.read().history_location(HistoryOptions(images="/flag/images"))
    assert (where.db, where.images) == ("sqlite:///from-settings.db", "/flag/images")


def test_a_group_whose_flag_clashes_with_a_parameter_is_refused():
    def command(models: ModelOptions, device: str | None = None):
        return models

    with pytest.raises(TypeError, match="device"):
        with_option_groups(command)
