"""Choosing brains by provider, sharing one backend, and taking the records of their calls."""

from __future__ import annotations

import json

import pytest
from fake_brain import FakeBrain
from fixtures_brain import TEST_API_KEY

from arpo.agents.brains import Brains, build_brains, build_run_brains
from arpo.core.errors import BrainError, InvalidInputError

HELLO = [{"role": "user", "content": "hi"}]


def test_offline_means_no_backends():
    brains = build_brains("offline", "offline")
    assert (brains.vlm, brains.llm) == (None, None)
    assert brains.describe_backends() == {"vlm": None, "llm": None}
    assert brains.take_calls() == []


def test_openai_needs_a_key():
    with pytest.raises(BrainError, match="OPENAI_API_KEY is not set"):
        build_brains("openai", "offline")


def test_openai_defaults_and_safe_description(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", TEST_API_KEY)
    brains = build_brains("openai", "openai")
    assert brains.vlm is brains.llm
    description = brains.describe_backends()
    assert description["vlm"]["model"] == description["llm"]["model"] == "gpt-4o"
    assert description["vlm"]["provider"] == "openai"
    assert TEST_API_KEY not in json.dumps(description)


def test_vllm_defaults_share_one_backend(monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    brains = build_brains("vllm", "vllm")
    assert brains.vlm is brains.llm
    assert brains.vlm.config.model == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert brains.vlm.config.base_url == "http://127.0.0.1:8000/v1"


def test_separate_urls_make_separate_backends():
    brains = build_brains("vllm", "vllm", llm_model="mistral", base_url="http://a/v1",
                          llm_base_url="http://b/v1")
    assert brains.vlm is not brains.llm
    assert (brains.vlm.config.base_url, brains.llm.config.base_url) == ("http://a/v1", "http://b/v1")
    assert brains.llm.config.model == "mistral"


def test_mixed_providers(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", TEST_API_KEY)
    brains = build_brains("openai", "offline", vlm_model="gpt-4o-mini")
    assert brains.vlm.config.model == "gpt-4o-mini" and brains.llm is None


def test_unknown_provider_is_invalid_input():
    with pytest.raises(InvalidInputError, match="unknown llm provider 'claude'"):
        build_brains("offline", "claude")


def test_take_calls_merges_both_brains_without_duplicates():
    one = FakeBrain().script("describer", "a cat").script("proposer", "[]")
    shared = Brains(vlm=one, llm=one)
    shared.vlm.complete(HELLO, role="describer")
    shared.llm.complete(HELLO, role="proposer")
    assert [record.role for record in shared.take_calls()] == ["describer", "proposer"]
    assert shared.take_calls() == []

    separate = Brains(vlm=FakeBrain(model="v").script("comparer", "no difference"),
                      llm=FakeBrain(model="l").script("proposer", "[]"))
    separate.llm.complete(HELLO, role="proposer")
    separate.vlm.complete(HELLO, role="comparer")
    records = separate.take_calls()
    assert [(record.role, record.model) for record in records] == [("proposer", "l"), ("comparer", "v")]


def test_run_brains_take_each_roles_tuning():
    from arpo.core.run_config import BrainChoice

    vlm = BrainChoice(provider="vllm", model="same", structured_output="off", max_tokens=64)
    llm = BrainChoice(provider="vllm", model="same", structured_output="json-object", temperature=0.0, seed=5)
    brains = build_run_brains(vlm, llm)
    assert brains.vlm is not brains.llm, "different tuning needs separate backends"
    assert (brains.vlm.config.structured_output, brains.vlm.config.max_tokens) == ("off", 64)
    assert (brains.llm.config.structured_output, brains.llm.config.temperature, brains.llm.config.seed) == (
        "json-object", 0.0, 5)
    assert (brains.vlm.config.temperature, brains.vlm.config.seed) == (0.2, 0), "unset means the defaults"
    assert brains.vlm.formats is brains.llm.formats, "one run, one memory of refused formats"
    recorded = brains.describe_backends()
    assert (recorded["vlm"]["structured_output"], recorded["llm"]["structured_output"]) == ("off", "json-object")


def test_an_unknown_option_is_invalid_input():
    with pytest.raises(InvalidInputError, match="unknown vlm brain option"):
        build_brains("vllm", "offline", vlm_options={"top_k": 3})
