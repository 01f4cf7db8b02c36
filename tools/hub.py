"""Loading pretrained weights without hanging: the local cache first, the network only when it can answer.

Every model-backed tool loads through `load_or_fail`. When weights are neither cached nor reachable
the person gets one `ModelUnavailableError` line pointing at `--models tiny`, within seconds, instead
of the hub client's minute of retries followed by a traceback.
"""

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from arpo.core.errors import InvalidInputError, ModelUnavailableError

Loaded = TypeVar("Loaded")


def _missing_weights_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "these files are not here / cannot be fetched", across the hub's versions."""
    errors: list[type[BaseException]] = [OSError]  # includes the hub's LocalEntryNotFoundError, HTTP errors
    try:
        from huggingface_hub.errors import EntryNotFoundError

        errors.append(EntryNotFoundError)
    except ImportError:
        pass
    try:
        import httpx

        errors.append(httpx.TransportError)
    except ImportError:
        pass
    return tuple(errors)


MISSING_WEIGHTS_ERRORS = _missing_weights_errors()


def _invalid_name_errors() -> tuple[type[BaseException], ...]:
    try:
        from huggingface_hub.errors import HFValidationError
    except ImportError:
        return ()
    return (HFValidationError,)


# Raised before any lookup when a name cannot be a hub id at all ("my model!").
_INVALID_NAME_ERRORS = _invalid_name_errors()

# How long a TCP connect to the hub may take before we call it unreachable.
REACHABILITY_TIMEOUT_S = 3.0

# open_clip's way of naming a model folder on disk.
LOCAL_DIR_PREFIX = "local-dir:"

_TRUE_WORDS = {"1", "true", "yes", "on"}
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_offline() -> bool:
    """True when the person (or the test setup) has switched the Hugging Face hub off."""
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(variable, "").strip().lower() in _TRUE_WORDS:
            return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def hub_reachable(timeout_s: float = REACHABILITY_TIMEOUT_S) -> bool:
    """A quick TCP probe of the hub endpoint.

    The hub client retries a failed connection for about half a minute; this probe answers in at most
    `timeout_s`. Behind a proxy a direct connect proves nothing, so then we let the client try.
    """
    if any(os.environ.get(variable) for variable in _PROXY_VARIABLES):
        return True
    endpoint = urlparse(_hub_endpoint())
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def model_unavailable(model_name: str, reason: str) -> ModelUnavailableError:
    """The one-line error for weights we cannot get."""
    reason = " ".join(str(reason).split())[:160]
    return ModelUnavailableError(
        f"Model '{model_name}' cannot be loaded here ({reason}); "
        "use --models tiny to run with tiny random models."
    )


def is_local_path(name_or_path: str) -> bool:
    """True when the name means a folder or file on disk rather than a hub id ("org/name").

    Names written as paths count even when nothing is there, so a mistyped path is reported as a
    missing folder instead of being looked up on the hub.
    """
    if name_or_path.startswith((LOCAL_DIR_PREFIX, "/", "./", "../", "~")):
        return True
    return _local_target(name_or_path).exists()


def _local_target(name_or_path: str) -> Path:
    return Path(name_or_path.removeprefix(LOCAL_DIR_PREFIX)).expanduser()


def load_or_fail(model_name: str, load: Callable[[bool], Loaded]) -> Loaded:
    """Call `load(local_files_only)`: from the cache first, then from the hub if allowed and reachable.

    `load` signals missing or unreachable files with one of `MISSING_WEIGHTS_ERRORS` (OSError and the
    hub's own errors, which is what transformers, diffusers and huggingface_hub raise). Any such
    failure ends as ModelUnavailableError; other errors (a bug, a bad config) propagate unchanged.
    """
    if is_local_path(model_name) and not _local_target(model_name).exists():
        raise model_unavailable(model_name, "no such file or folder")
    try:
        return load(True)
    except _INVALID_NAME_ERRORS as bad_name:
        message = f"'{model_name}' is neither a folder nor a valid Hugging Face model id."
        raise InvalidInputError(message) from bad_name
    except MISSING_WEIGHTS_ERRORS as not_cached:
        if is_local_path(model_name):
            reason = f"local files missing or incomplete: {not_cached}"
            raise model_unavailable(model_name, reason) from not_cached
        if hub_offline():
            reason = "not in the local cache and HF_HUB_OFFLINE is set"
            raise model_unavailable(model_name, reason) from not_cached
    if not hub_reachable():
        raise model_unavailable(model_name, f"not in the local cache and {_hub_endpoint()} is unreachable")
    try:
        return load(False)
    except MISSING_WEIGHTS_ERRORS as download_failed:
        raise model_unavailable(model_name, f"download failed: {download_failed}") from download_failed


def _hub_endpoint() -> str:
    try:
        from huggingface_hub import constants
    except ImportError:
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return constants.ENDPOINT
