"""Fail-fast loading: cache first, the network only when allowed and reachable."""

import time

import pytest

from arpo.core.errors import InvalidInputError, ModelUnavailableError
from arpo.tools import hub


class ScriptedLoader:
    """A stand-in for a model loader: fails or succeeds per `local_files_only`, and records calls."""

    def __init__(self, cached: bool, download_error: BaseException | None = None):
        self.cached = cached
        self.download_error = download_error
        self.calls: list[bool] = []

    def __call__(self, local_files_only: bool) -> str:
        self.calls.append(local_files_only)
        if local_files_only and not self.cached:
            raise FileNotFoundError("not in cache")
        if not local_files_only and self.download_error is not None:
            raise self.download_error
        return "weights"


def test_cached_weights_load_without_network(monkeypatch):
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: pytest.fail("must not probe the network"))
    loader = ScriptedLoader(cached=True)
    assert hub.load_or_fail("org/model", loader) == "weights"
    assert loader.calls == [True]


def test_offline_and_not_cached_fails_at_once_with_one_line():
    loader = ScriptedLoader(cached=False)
    with pytest.raises(ModelUnavailableError) as raised:
        hub.load_or_fail("org/model", loader)
    message = str(raised.value)
    assert "org/model" in message and "--models tiny" in message and "HF_HUB_OFFLINE" in message
    assert "\n" not in message
    assert loader.calls == [True]


def test_unreachable_hub_fails_without_trying_to_download(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_offline", lambda: False)
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: False)
    loader = ScriptedLoader(cached=False)
    with pytest.raises(ModelUnavailableError, match="unreachable"):
        hub.load_or_fail("org/model", loader)
    assert loader.calls == [True]


def test_reachable_hub_downloads_and_download_errors_become_model_unavailable(monkeypatch):
    monkeypatch.setattr(hub, "hub_offline", lambda: False)
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: True)
    loader = ScriptedLoader(cached=False)
    assert hub.load_or_fail("org/model", loader) == "weights"
    assert loader.calls == [True, False]
    failing = ScriptedLoader(cached=False, download_error=ConnectionError("reset by peer"))
    with pytest.raises(ModelUnavailableError, match="download failed"):
        hub.load_or_fail("org/model", failing)


def test_errors_that_are_not_about_missing_files_propagate():
    def broken(local_files_only: bool) -> str:
        raise ValueError("bad config value")

    with pytest.raises(ValueError, match="bad config"):
        hub.load_or_fail("org/model", broken)


def test_reachability_probe_gives_up_quickly_on_a_dead_endpoint(monkeypatch):
    for variable in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(hub, "_hub_endpoint", lambda: "https://127.0.0.1:9")  # discard port: nothing listens
    started = time.perf_counter()
    assert hub.hub_reachable(timeout_s=1.0) is False
    assert time.perf_counter() - started < 2.0


def test_names_that_cannot_be_hub_ids_are_input_errors():
    from huggingface_hub.utils import validate_repo_id

    def loader(local_files_only: bool) -> str:
        validate_repo_id("my model!")
        return "weights"

    with pytest.raises(InvalidInputError, match="neither a folder nor a valid"):
        hub.load_or_fail("my model!", loader)


def test_missing_local_folders_are_reported_without_loading(tmp_path):
    loader = ScriptedLoader(cached=False)
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ModelUnavailableError, match="no such file or folder"):
        hub.load_or_fail(missing, loader)
    with pytest.raises(ModelUnavailableError, match="no such file or folder"):
        hub.load_or_fail(f"local-dir:{missing}", loader)
    assert loader.calls == []
    assert hub.is_local_path("./relative/model") and not hub.is_local_path("org/model")


def test_incomplete_local_folders_are_reported_as_local(tmp_path):
    with pytest.raises(ModelUnavailableError, match="local files missing or incomplete"):
        hub.load_or_fail(str(tmp_path), ScriptedLoader(cached=False))
