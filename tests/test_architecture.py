"""The layers hold: imports point down only (app -> eval | training -> graphs -> agents -> tools | storage
-> core, so training code is reachable from the app alone), no package's modules import each other in a
cycle, and the core imports no heavy library. The contracts live in pyproject.toml; `lint-imports` checks
them here so the README's test command (and CI) runs them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest
from importlinter import api
from importlinter.contracts.acyclic_siblings import AcyclicSiblingsContract
from importlinter.contracts.forbidden import ForbiddenContract
from importlinter.contracts.layers import LayersContract

ROOT = Path(__file__).resolve().parents[1]
CONTRACT_TYPES = {"layers": LayersContract, "forbidden": ForbiddenContract, "acyclic_siblings": AcyclicSiblingsContract}


def _lint_imports() -> Path:
    found = Path(sys.executable).with_name("lint-imports")
    return found if found.exists() else Path(shutil.which("lint-imports") or "lint-imports")


def test_lint_imports_finds_every_contract_kept():
    result = subprocess.run(
        [str(_lint_imports()), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.fixture(scope="module")
def contracts_and_graph():
    configuration = api.read_configuration(str(ROOT / "pyproject.toml"))
    session = configuration["session_options"]
    graph = grimp.build_graph("arpo", include_external_packages=True, cache_dir=None)
    contracts = {
        options["name"]: CONTRACT_TYPES[options["type"]](options["name"], session, options)
        for options in configuration["contracts_options"]
    }
    return contracts, graph


def _broken_by(contracts, graph, importer: str, imported: str) -> set[str]:
    """The contracts one added import would break."""
    assert not graph.direct_import_exists(importer=importer, imported=imported)
    graph.add_import(importer=importer, imported=imported, line_number=1, line_contents=f"import {imported}")
    try:
        return {name for name, contract in contracts.items() if not contract.check(graph, verbose=False).kept}
    finally:
        graph.remove_import(importer=importer, imported=imported)


@pytest.mark.parametrize(
    ("importer", "imported", "contract_word"),
    [
        ("arpo.core.errors", "arpo.app.cli", "Layers"),  # the ground floor reaching the front door
        ("arpo.tools.clip_scorer", "arpo.graphs.state", "Layers"),  # a tool knowing the graph
        ("arpo.storage.history", "arpo.tools.clip_scorer", "Layers"),  # storage and tools stay apart
        ("arpo.tools.regressor.inverter", "arpo.training.regressor.loop", "Layers"),  # inference reaching training
        ("arpo.eval.methods", "arpo.training.inverter", "Layers"),  # evaluation and training stay apart
        ("arpo.core.run_config", "torch", "core stays light"),
        ("arpo.graphs.state", "arpo.graphs.builder", "cycles"),  # builder -> nodes -> ... -> state
    ],
)
def test_the_contracts_catch_an_import_that_points_the_wrong_way(contracts_and_graph, importer, imported, contract_word):
    contracts, graph = contracts_and_graph
    assert not _broken_by(contracts, graph, "arpo.app.cli", "arpo.core.phrases")  # a downward import is fine
    broken = _broken_by(contracts, graph, importer, imported)
    assert any(contract_word in name for name in broken), broken
