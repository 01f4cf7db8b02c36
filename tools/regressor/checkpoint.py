"""Saving a trained regressor as a folder, and loading it back with everything needed to use it.

A checkpoint folder holds `regressor.json` (format, config, vocabulary), `weights.safetensors` (the
trained modules only: the U-Net backbone's VAE, text encoder and captioner are reloaded by name), and
the bank of training prompts (`prompt_bank.json` + `prompt_bank.npy`) that predictions are matched
against by default.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from arpo.core.errors import InvalidInputError
from arpo.tools.regressor.model import PromptRegressor, RegressorConfig
from arpo.tools.regressor.prompt_bank import PromptBank
from arpo.tools.regressor.vocabulary import Vocabulary

FORMAT = "arpo-regressor"
FORMAT_VERSION = 1
CONFIG_FILE = "regressor.json"
WEIGHTS_FILE = "weights.safetensors"
BANK_PROMPTS_FILE = "prompt_bank.json"
BANK_EMBEDDINGS_FILE = "prompt_bank.npy"


@dataclass
class LoadedRegressor:
    """A regressor ready to predict, with its vocabulary, its own prompt bank and where it came from."""

    model: PromptRegressor
    config: RegressorConfig
    vocabulary: Vocabulary
    bank: PromptBank | None
    folder: Path


def save_checkpoint(
    folder: str | Path,
    model: PromptRegressor,
    vocabulary: Vocabulary,
    bank: PromptBank | None = None,
) -> Path:
    """Write the checkpoint folder (created if needed; files of an older checkpoint are replaced)."""
    from safetensors.torch import save_model

    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    document = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "vocabulary": vocabulary.to_dict(),
    }
    save_model(model, str(folder / WEIGHTS_FILE))
    if bank is not None:
        (folder / BANK_PROMPTS_FILE).write_text(json.dumps(bank.prompts, ensure_ascii=False), encoding="utf-8")
        np.save(folder / BANK_EMBEDDINGS_FILE, bank.embeddings, allow_pickle=False)
    # The config goes last: a folder with a config file is a complete checkpoint.
    (folder / CONFIG_FILE).write_text(json.dumps(document, indent=2), encoding="utf-8")
    return folder


def load_checkpoint(path: str | Path, *, device: str | None = None, with_bank: bool = True) -> LoadedRegressor:
    """Rebuild the regressor saved at `path` (its folder, or any file inside it).

    `with_bank=False` skips reading its prompt bank (every training prompt and its embedding), for
    callers that match against another bank or none.
    """
    from safetensors.torch import load_model

    from arpo.tools.devices import pick_device
    from arpo.tools.regressor.backbones import build_backbone

    folder = checkpoint_folder(path)
    document = _read_document(folder)
    config = RegressorConfig.from_dict(document["config"])
    vocabulary = Vocabulary.from_dict(document["vocabulary"])
    backbone = build_backbone(config.backbone, pretrained=False, device=device, seed=config.seed)
    model = PromptRegressor(backbone, config)
    torch_device = pick_device(device)
    try:
        load_model(model, str(folder / WEIGHTS_FILE), strict=True, device="cpu")
    except (OSError, RuntimeError, ValueError) as error:
        reason = " ".join(str(error).split())[:160]
        raise InvalidInputError(f"Regressor weights in '{folder}' cannot be loaded: {reason}") from None
    model.to(torch_device).eval()
    bank = _read_bank(folder, config.target_space) if with_bank else None
    return LoadedRegressor(model, config, vocabulary, bank, folder)


def checkpoint_folder(path: str | Path) -> Path:
    """The checkpoint folder meant by `path`; InvalidInputError if it is not a regressor checkpoint."""
    path = Path(path).expanduser()
    folder = path.parent if path.is_file() else path
    if not (folder / CONFIG_FILE).is_file():
        raise InvalidInputError(f"'{path}' is not a regressor checkpoint (no {CONFIG_FILE}).")
    return folder


def _read_document(folder: Path) -> dict:
    try:
        document = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InvalidInputError(f"Cannot read '{folder / CONFIG_FILE}': {error.__class__.__name__}.") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise InvalidInputError(f"'{folder / CONFIG_FILE}' is not an arpo regressor checkpoint.")
    if document.get("version", 0) > FORMAT_VERSION:
        raise InvalidInputError(f"'{folder}' was written by a newer arpo (format {document['version']}).")
    return document


def _read_bank(folder: Path, space_name: str) -> PromptBank | None:
    prompts_path, embeddings_path = folder / BANK_PROMPTS_FILE, folder / BANK_EMBEDDINGS_FILE
    if not (prompts_path.is_file() and embeddings_path.is_file()):
        return None
    prompts = json.loads(prompts_path.read_text(encoding="utf-8"))
    return PromptBank(prompts, np.load(embeddings_path, allow_pickle=False), space_name)
