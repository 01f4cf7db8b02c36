"""The regressor's objective: cosine distance to the prompt's embedding plus λ times the vocabulary BCE."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional

# The checkpoint's config records λ, so its default lives with the model.
from arpo.tools.regressor.model import DEFAULT_VOCABULARY_WEIGHT


@dataclass
class LossParts:
    """The total loss to minimise and its two terms (as tensors, so callers can log or backpropagate)."""

    total: torch.Tensor
    cosine: torch.Tensor
    vocabulary: torch.Tensor


def cosine_similarities(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample cosine similarity between predicted and target embeddings, [b]."""
    return functional.cosine_similarity(predicted, target, dim=1)


def regressor_loss(
    embedding: torch.Tensor,
    vocabulary_logits: torch.Tensor | None,
    target: torch.Tensor,
    word_labels: torch.Tensor,
    vocabulary_weight: float = DEFAULT_VOCABULARY_WEIGHT,
) -> LossParts:
    """Mean (1 - cosine) over the batch, plus λ · mean binary cross-entropy over batch and vocabulary.

    With an empty vocabulary (or λ = 0) the second term is zero.
    """
    cosine = (1.0 - cosine_similarities(embedding, target)).mean()
    if vocabulary_logits is None or vocabulary_logits.shape[1] == 0:
        vocabulary = torch.zeros((), device=embedding.device)
    else:
        vocabulary = functional.binary_cross_entropy_with_logits(vocabulary_logits, word_labels)
    return LossParts(total=cosine + vocabulary_weight * vocabulary, cosine=cosine, vocabulary=vocabulary)
