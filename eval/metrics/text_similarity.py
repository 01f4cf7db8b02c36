"""BERTScore between a recovered prompt and the ground-truth prompt, when the data set knows it.

The `bert-score` package computes the greedy token matching; we hand it the encoder and tokenizer
ourselves so that loading follows arpo's cache-first, fail-fast rule and tests can use a tiny encoder.
The real default is the package's own choice for English: roberta-large, cut after layer 17.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

from arpo.eval.metrics.scores import MetricScore
from arpo.tools.devices import pick_device
from arpo.tools.hub import load_or_fail

DEFAULT_MODEL = "roberta-large"


class BertScore:
    """F1 BERTScore (0..1, 1 for identical texts) of a candidate against a reference text."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, name: str) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self._lock = threading.Lock()
        # Without idf weighting every token counts once; the markers around the text count for nothing.
        self._weights: defaultdict[int, float] = defaultdict(lambda: 1.0)
        for marker in (tokenizer.sep_token_id, tokenizer.cls_token_id):
            if marker is not None:
                self._weights[marker] = 0.0

    def score(self, candidate: str, reference: str) -> MetricScore:
        """BERTScore F1 of `candidate` (the recovered prompt) against `reference` (the true prompt)."""
        from bert_score.utils import bert_cos_score_idf

        with self._lock:
            precision_recall_f1 = bert_cos_score_idf(
                self.model,
                [reference],
                [candidate],
                self.tokenizer,
                self._weights,
                device=str(self.model.device),
            )
        return MetricScore("bertscore", float(precision_recall_f1[0, 2]), self.name)

    @classmethod
    def from_pretrained(cls, model_id: str = DEFAULT_MODEL, num_layers: int | None = None, device: str | None = None) -> "BertScore":
        """Load an encoder by Hugging Face id and keep its first `num_layers` layers.

        `num_layers` defaults to bert-score's tuned layer for that model (17 for roberta-large).
        """
        from bert_score.utils import model2layers

        layers = num_layers or model2layers.get(model_id)

        def load(local_files_only: bool) -> tuple[torch.nn.Module, Any]:
            model = AutoModel.from_pretrained(model_id, local_files_only=local_files_only)
            tokenizer = AutoTokenizer.from_pretrained(model_id, local_files_only=local_files_only)
            return model, tokenizer

        model, tokenizer = load_or_fail(model_id, load)
        if layers is not None:
            _keep_first_layers(model, layers)
        name = f"{model_id}@L{layers}" if layers is not None else model_id
        return cls(model.to(pick_device(device)), tokenizer, name=name)

    @classmethod
    def tiny(cls, seed: int = 0) -> "BertScore":
        """A random two-layer BERT over the real CLIP BPE vocabulary."""
        from arpo.tools.clip_tokenizer import offline_clip_tokenizer

        tokenizer = offline_clip_tokenizer()
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            max_position_embeddings=tokenizer.model_max_length + 2,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = BertModel(config, add_pooling_layer=False)
        return cls(model, tokenizer, name=f"tiny-bert-seed{seed}")


def _keep_first_layers(model: torch.nn.Module, count: int) -> None:
    """Cut the encoder after `count` layers, the layer bert-score's authors found best for the model."""
    encoder = getattr(model, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if layers is None:
        return  # not a BERT-style encoder: keep every layer
    encoder.layer = torch.nn.ModuleList(list(layers)[:count])
