"""Where models run: pick the torch device and the dtype that suits it (or the one a person named)."""

import torch

from arpo.core.errors import InvalidInputError

_AUTO = {None, "", "auto"}
# The names --dtype accepts, and the short forms people also type.
DTYPE_NAMES = ("float32", "float16", "bfloat16")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}


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


def pick_dtype(device: torch.device | str, preferred: str | torch.dtype | None = None) -> torch.dtype:
    """The named dtype when there is one; else half precision on CUDA (the usual way to run diffusion
    models there) and full precision elsewhere.

    CPUs are slow and often inaccurate in float16, and MPS float16 still has gaps in operator support.
    """
    if preferred not in _AUTO:
        return parse_dtype(preferred)
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """torch dtype for a --dtype name (float32, float16, bfloat16; fp32/fp16/bf16 also read)."""
    if isinstance(name, torch.dtype):
        return name
    key = name.strip().lower().removeprefix("torch.")
    key = _DTYPE_ALIASES.get(key, key)
    if key not in _DTYPES:
        raise InvalidInputError(f"unknown dtype '{name}'; choose one of: {', '.join(DTYPE_NAMES)}")
    return _DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    """"float16" for torch.float16: the form run records and --dtype use."""
    return str(dtype).removeprefix("torch.")


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
