"""arpo: recover the text prompt behind an image for a text-to-image model, and show the work.

The design-card folders import as one namespace: ``arpo.agents`` (brains), ``arpo.tools`` (model-backed
tools), ``arpo.graphs`` (LangGraph state graphs), ``arpo.storage`` (history) and ``arpo.eval``.
"""

import os
from pathlib import Path

# LangGraph reads this once, when it is first imported; checkpoints restored on resume must only ever
# deserialize plain data, so it is locked down before any submodule can import langgraph.
os.environ.setdefault("LANGGRAPH_STRICT_MSGPACK", "true")

__version__ = "0.1.0"

SAMPLE_IMAGE = Path(__file__).parent / "examples" / "chelsea.jpg"
"""The bundled reference image (package data) used by the demo, the benchmark and the tests."""
