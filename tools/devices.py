"""Where models run: pick the torch device and the dtype that suits it."""

import torch

from arpo.errors import InvalidInputError

_AUTO = {None, "", "auto"}


def pick_device(preferred: str | None = None) -> torch.device:
    """The device to run models on.

    With no preference (or "auto") this is CUDA when present, then Apple's MPS, else the CPU.
    A named device ("cpu", "cuda", "cuda:1", "mps") wins, but only if this machine has it: asking
    for a GPU that is not there is a mistake the person should hear about now, not as a torch
    traceback halfway through a run.
    """
    if preferred in _AUTO:
        return _best_available_device()
    try:
        device = torch.device(preferred)
    except (RuntimeError, TypeError) as bad_name:
        message = f"Unknown device '{preferred}': use auto, cpu, cuda, cuda:N or mps."
        raise InvalidInputError(message) from bad_name
    if not _device_present(device):
        raise InvalidInputError(f"Device '{preferred}' is not available here; use --device auto or cpu.")
    return device


def pick_dtype(device: torch.device | str) -> torch.dtype:
    """Half precision on CUDA (the usual way to run diffusion models there), full precision elsewhere.

    CPUs are slow and often inaccurate in float16, and MPS float16 still has gaps in operator support.
    """
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def _best_available_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _device_present(device: torch.device) -> bool:
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        return device.index is None or device.index < torch.cuda.device_count()
    if device.type == "mps":
        return _mps_available()
    # Other backends (xpu, ...) are left to torch to judge when the model is moved there.
    return True


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
