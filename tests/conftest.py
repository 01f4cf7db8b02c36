"""Shared test setup: offline, CPU, quiet, and every test gets its own arpo home."""

import os

# Must be set before langgraph or huggingface libraries are imported anywhere in the test session.
os.environ.setdefault("LANGGRAPH_STRICT_MSGPACK", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def arpo_home(tmp_path, monkeypatch):
    """Keep databases, images and caches of each test inside its own temporary folder."""
    home = tmp_path / "arpo-home"
    monkeypatch.setenv("ARPO_HOME", str(home))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    # A refinement runs an inversion method's optimisation when a round keeps nothing; the tests that
    # are not about refinement switch it off, as diffusers' tests run few denoising steps.
    monkeypatch.setenv("ARPO_REFINE", "none")
    return home


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny models gain nothing from threads; on a busy 2-core machine extra threads spin-wait and make
    them up to 20x slower. Set once for the whole suite."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def postgres_cluster():
    """One throwaway PostgreSQL server for the session (skipped without server binaries)."""
    from postgres_server import start_cluster

    cluster = start_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster):
    """A fresh, empty PostgreSQL database for one test, as a SQLAlchemy URL."""
    return postgres_cluster.new_database()


def pytest_collection_modifyitems(config, items):
    """Skip tests marked `slow` unless ARPO_RUN_SLOW=1: they need servers or models that the default,
    offline suite does not start or have."""
    if os.environ.get("ARPO_RUN_SLOW") == "1":
        return
    skip_slow = pytest.mark.skip(reason="slow test: set ARPO_RUN_SLOW=1 to run it")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip_slow)
