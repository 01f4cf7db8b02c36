"""`arpo ui`: a non-loopback address needs a login (or an explicit --no-auth), bad auth values are one
line and exit 2, and the CLI's run options reach the sessions the page starts."""

from __future__ import annotations

import gradio as gr
import pytest
from cli_harness import run_arpo

from arpo.app.commands.ui import is_loopback


@pytest.fixture
def launched(monkeypatch):
    """What `arpo ui` passed to Gradio's launch (nothing is served)."""
    calls: list[dict] = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: calls.append({"app": self, **kwargs}))
    return calls


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "example.org"])
def test_a_network_address_without_a_login_is_refused_in_one_line(capsys, launched, host):
    outcome = run_arpo(capsys, "ui", "--host", host)
    assert outcome.exit_code == 2 and outcome.stderr.count("\n") == 1, outcome.stderr
    assert "without a login" in outcome.stderr and "--auth USER:PASSWORD" in outcome.stderr and "--no-auth" in outcome.stderr
    assert launched == []


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--auth", "alice"], "USER:PASSWORD"),
        (["--auth", ":secret"], "USER:PASSWORD"),
        (["--auth", "alice:"], "USER:PASSWORD"),
        (["--auth-file", "/nonexistent/logins"], "cannot read --auth-file"),
        (["--auth", "alice:pw", "--no-auth"], "contradicts"),
    ],
)
def test_bad_auth_values_are_one_line_and_exit_2(capsys, launched, args, problem):
    outcome = run_arpo(capsys, "ui", "--host", "0.0.0.0", *args)
    assert outcome.exit_code == 2 and outcome.stderr.count("\n") == 1, outcome.stderr
    assert problem in outcome.stderr and "pw" not in outcome.stderr.replace("--auth", "")
    assert launched == []


def test_logins_from_the_flag_and_the_file_go_to_gradios_auth(capsys, launched, tmp_path, monkeypatch):
    monkeypatch.setenv("ARPO_HOME", str(tmp_path))
    logins = tmp_path / "logins"
    logins.write_text("# who may come in\nbob:hunter2:with colon\n\ncarol:pw\n")
    outcome = run_arpo(capsys, "ui", "--host", "0.0.0.0", "--auth", "alice:s3cret", "--auth-file", str(logins))
    assert outcome.exit_code == 0, outcome.stderr
    assert launched[0]["auth"] == [("alice", "s3cret"), ("bob", "hunter2:with colon"), ("carol", "pw")]
    assert launched[0]["server_name"] == "0.0.0.0" and "login required (3 user(s))" in outcome.stderr
    assert "s3cret" not in outcome.stderr


def test_loopback_needs_no_login_and_no_auth_is_explicit(capsys, launched, tmp_path, monkeypatch):
    monkeypatch.setenv("ARPO_HOME", str(tmp_path))
    assert run_arpo(capsys, "ui").exit_code == 0
    assert run_arpo(capsys, "ui", "--host", "0.0.0.0", "--no-auth").exit_code == 0
    assert [call["auth"] for call in launched] == [None, None]


def test_the_clis_brain_and_run_options_reach_the_page(capsys, launched, tmp_path, monkeypatch):
    monkeypatch.setenv("ARPO_HOME", str(tmp_path))
    outcome = run_arpo(
        capsys, "ui", "--models", "tiny-sdxl", "--brain", "openai", "--vlm-brain", "vllm", "--vlm-base-url",
        "http://127.0.0.1:9/v1", "--llm-brain", "offline", "--steps", "4", "--max-tokens", "123", "--temperature", "0.5",
    )
    assert outcome.exit_code == 0, outcome.stderr
    config = launched[0]["app"].get_config_file()
    values = {c["props"].get("elem_id"): c["props"].get("value") for c in config["components"] if c.get("props")}
    assert values["models"] == "tiny-sdxl" and values["vlm-brain"] == "vllm" and values["llm-brain"] == "offline"
    assert values["vlm-base-url"] == "http://127.0.0.1:9/v1"


def test_bad_run_options_are_refused_before_serving(capsys, launched):
    outcome = run_arpo(capsys, "ui", "--vlm-brain", "nonsense")
    assert outcome.exit_code == 2 and outcome.stderr.count("\n") == 1, outcome.stderr
    assert launched == []


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.5.0.1", True), ("::1", True), ("[::1]", True),
                                                ("localhost", True), ("0.0.0.0", False), ("10.0.0.1", False), ("", False)])
def test_loopback_addresses(host, loopback):
    assert is_loopback(host) is loopback


def test_run_options_from_the_cli_shape_every_session_the_page_starts(capsys, launched, tmp_path, monkeypatch):
    import arpo.app.web_ui
    from arpo.app.web_ui_handlers import SessionHandlers, StartForm

    monkeypatch.setenv("ARPO_HOME", str(tmp_path))
    seen = []
    real = arpo.app.web_ui.build_ui
    monkeypatch.setattr(arpo.app.web_ui, "build_ui", lambda history, defaults: seen.append(defaults) or real(history, defaults))
    outcome = run_arpo(capsys, "ui", "--models", "tiny", "--brain", "offline", "--steps", "4", "--max-tokens", "123",
                       "--temperature", "0.5", "--llm-brain", "vllm", "--llm-base-url", "http://127.0.0.1:9/v1")
    assert outcome.exit_code == 0, outcome.stderr
    defaults = seen[0]
    form = StartForm(**{name: defaults.shown(name) for name in ("models", "brain", "vlm_brain", "llm_brain", "llm_base_url")})
    config = SessionHandlers(None, defaults).config(form)
    assert config.steps == 4 and config.vlm.max_tokens == 123 and config.llm.temperature == 0.5
    assert config.vlm.provider == "offline" and config.llm.provider == "vllm"
    assert config.llm.base_url == "http://127.0.0.1:9/v1"


def test_scheduler_and_dtype_flags_shape_every_session_the_page_starts(capsys, launched, tmp_path, monkeypatch):
    import os

    import arpo.app.web_ui
    from arpo.app.web_ui_handlers import SessionHandlers, StartForm

    monkeypatch.setenv("ARPO_HOME", str(tmp_path))
    monkeypatch.delenv("ARPO_SCHEDULER", raising=False)
    monkeypatch.delenv("ARPO_DTYPE", raising=False)
    seen = []
    real = arpo.app.web_ui.build_ui
    monkeypatch.setattr(arpo.app.web_ui, "build_ui", lambda history, defaults: seen.append(defaults) or real(history, defaults))
    outcome = run_arpo(capsys, "ui", "--models", "tiny", "--brain", "offline", "--scheduler", "DDIM", "--dtype", "bf16")
    assert outcome.exit_code == 0, outcome.stderr
    config = SessionHandlers(None, seen[0]).config(StartForm(models="tiny", brain="offline"))
    assert config.scheduler == "ddim" and config.dtype == "bfloat16"
    assert "ARPO_SCHEDULER" not in os.environ and "ARPO_DTYPE" not in os.environ  # the server's own process settings stay


@pytest.mark.parametrize("flag", [["--scheduler", "nonsense"], ["--dtype", "float8"]])
def test_bad_scheduler_or_dtype_is_refused_before_serving(capsys, launched, flag):
    outcome = run_arpo(capsys, "ui", *flag)
    assert outcome.exit_code == 2 and outcome.stderr.count("\n") == 1, outcome.stderr
    assert launched == []
