"""Device and dtype choice."""

import pytest
import torch

from arpo.core.errors import InvalidInputError
from arpo.tools.devices import pick_device, pick_dtype


def test_auto_picks_cpu_on_a_machine_without_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device() == torch.device("cpu")
    assert pick_device("auto") == torch.device("cpu")


def test_auto_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device() == torch.device("mps")


def test_named_device_overrides_the_automatic_choice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("cpu") == torch.device("cpu")


def test_missing_or_unknown_device_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InvalidInputError, match="not available"):
        pick_device("cuda")
    with pytest.raises(InvalidInputError, match="Unknown device"):
        pick_device("gpu-please")


def test_half_precision_only_on_cuda():
    assert pick_dtype(torch.device("cuda")) is torch.float16
    assert pick_dtype("cuda:1") is torch.float16
    assert pick_dtype(torch.device("cpu")) is torch.float32
    assert pick_dtype("mps") is torch.float32


def test_named_dtype_wins_and_short_names_are_read():
    import torch

    from arpo.tools.devices import parse_dtype, pick_dtype

    assert pick_dtype("cpu", "bfloat16") == torch.bfloat16
    assert pick_dtype("cuda", "float32") == torch.float32
    assert pick_dtype("cpu", None) == torch.float32 and pick_dtype("cuda", "auto") == torch.float16
    assert [parse_dtype(name) for name in ("fp16", "bf16", "FP32", "torch.float16")] == [
        torch.float16, torch.bfloat16, torch.float32, torch.float16
    ]


def test_unknown_dtype_is_one_clear_error():
    from arpo.core.errors import InvalidInputError
    from arpo.tools.devices import parse_dtype

    with pytest.raises(InvalidInputError, match="choose one of: float32, float16, bfloat16"):
        parse_dtype("float8")
