"""Pytest fixture for the scripted brain server, plus a helper that points a ChatBackend at it.

Use in a test module with a direct import (tests/ is on sys.path under pytest's default import mode):

    from fixtures_brain import brain_server, scripted_backend  # noqa: F401  (fixture)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from scripted_server import BrainServer, ScriptedBrain

from arpo.agents.backend import BackendConfig, ChatBackend

TEST_API_KEY = "sk-test-SECRET-0123456789abcdef"
"""Key the scripted backends send; tests check it never leaks into messages or records."""


@pytest.fixture
def brain_server() -> Iterator[BrainServer]:
    """A running scripted OpenAI-compatible server on a free local port, stopped after the test."""
    server = BrainServer(ScriptedBrain()).start()
    try:
        yield server
    finally:
        server.stop()


def scripted_backend(server: BrainServer, **config: Any) -> ChatBackend:
    """A ChatBackend talking to `server`, with test-sized timeouts and retry waits.

    Keyword arguments override BackendConfig fields (provider, model, timeout_s, multi_image, ...).
    """
    settings: dict[str, Any] = {
        "provider": "vllm",
        "model": "scripted-model",
        "base_url": server.base_url,
        "api_key": TEST_API_KEY,
        "timeout_s": 5.0,
        "max_attempts": 3,
        "retry_wait_s": 0.01,
        "retry_max_wait_s": 0.05,
    }
    if config.pop("json_schema_output", True) is False:  # the older spelling of "off"
        settings["structured_output"] = "off"
    settings.update(config)
    return ChatBackend(BackendConfig(**settings))
