"""The prompt-embedding regressor: a backbone, an embedding head, and a vocabulary head read from the
predicted embedding (the paper's third head configuration, its best).

Each head is one linear layer, as in the paper. Putting the vocabulary head after the embedding head
forces the predicted embedding itself to carry which words the prompt used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from arpo.tools.regressor.backbones import Backbone

DEFAULT_VOCABULARY_WEIGHT = 0.1  # the paper's λ: weight of the vocabulary loss beside the cosine loss


@dataclass
class RegressorConfig:
    """Everything needed to rebuild a trained regressor's architecture and read its outputs."""

    backbone: str
    target_space: str
    embedding_dim: int
    vocabulary_size: int
    vocabulary_weight: float = DEFAULT_VOCABULARY_WEIGHT
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    """Plain JSON facts kept with the checkpoint (backbone description, training summary)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RegressorConfig":
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)


@dataclass
class RegressorOutput:
    embedding: torch.Tensor
    """[b, embedding_dim], not normalised (the loss and retrieval only use its direction)."""
    vocabulary_logits: torch.Tensor | None
    """[b, vocabulary_size] logits of each vocabulary word being in the prompt; None without a vocabulary."""


class PromptRegressor(nn.Module):
    """Image -> predicted sentence embedding of its prompt (+ vocabulary logits)."""

    def __init__(self, backbone: Backbone, config: RegressorConfig):
        super().__init__()
        self.config = config
        self.backbone = backbone
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.embedding_head = nn.Linear(backbone.feature_dim, config.embedding_dim)
            self.vocabulary_head = (
                nn.Linear(config.embedding_dim, config.vocabulary_size) if config.vocabulary_size else None
            )

    def forward(self, prepared: dict[str, torch.Tensor]) -> RegressorOutput:
        embedding = self.embedding_head(self.backbone(prepared))
        logits = self.vocabulary_head(embedding) if self.vocabulary_head is not None else None
        return RegressorOutput(embedding, logits)

    @property
    def device(self) -> torch.device:
        return self.embedding_head.weight.device

    def predict(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """[n, embedding_dim] unit-length predicted embeddings, float32."""
        self.eval()
        rows = []
        for start in range(0, len(images), batch_size):
            prepared = self.backbone.prepare(images[start : start + batch_size])
            with torch.inference_mode():
                embedding = self(to_device(prepared, self.device)).embedding
            rows.append(nn.functional.normalize(embedding.float(), dim=1).cpu().numpy())
        return np.concatenate(rows) if rows else np.zeros((0, self.config.embedding_dim), dtype=np.float32)


def to_device(prepared: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: tensor.to(device) for name, tensor in prepared.items()}
