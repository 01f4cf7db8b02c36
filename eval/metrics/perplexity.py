"""Perplexity of a recovered prompt under a small causal language model (gpt2 by default).

A low perplexity means the prompt reads like ordinary text; inversion methods that optimise tokens
directly (PEZ) tend to produce high-perplexity word salad, which this makes visible.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from arpo.eval.metrics.scores import MetricScore
from arpo.tools.devices import pick_device
from arpo.tools.hub import load_or_fail

DEFAULT_MODEL = "gpt2"


class PromptPerplexity:
    """exp(mean next-token negative log-likelihood) of a text under one causal LM."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, name: str) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self._lock = threading.Lock()

    def score(self, text: str) -> MetricScore:
        """Perplexity of `text`; the first word is predicted from the start-of-text token."""
        ids = self._token_ids(text)
        with self._lock, torch.inference_mode():
            loss = self.model(input_ids=ids, labels=ids).loss
        return MetricScore("perplexity", math.exp(float(loss)), self.name)

    def _token_ids(self, text: str) -> torch.Tensor:
        limit = getattr(self.model.config, "n_positions", None) or self.tokenizer.model_max_length
        ids = self.tokenizer(text, truncation=True, max_length=limit)["input_ids"]
        start = self.tokenizer.bos_token_id
        # GPT-2's tokenizer adds no start token; without one a one-word prompt would have nothing to score.
        if start is not None and (not ids or ids[0] != start):
            ids = [start, *ids][:limit]
        return torch.tensor([ids], device=self.model.device)

    @classmethod
    def from_pretrained(cls, model_id: str = DEFAULT_MODEL, device: str | None = None) -> "PromptPerplexity":
        """Load a causal LM and its tokenizer by Hugging Face id."""

        def load(local_files_only: bool) -> tuple[torch.nn.Module, Any]:
            model = AutoModelForCausalLM.from_pretrained(model_id, local_files_only=local_files_only)
            tokenizer = AutoTokenizer.from_pretrained(model_id, local_files_only=local_files_only)
            return model, tokenizer

        model, tokenizer = load_or_fail(model_id, load)
        return cls(model.to(pick_device(device)), tokenizer, name=model_id)

    @classmethod
    def tiny(cls, seed: int = 0) -> "PromptPerplexity":
        """A random two-layer GPT-2 over the real CLIP BPE vocabulary."""
        from arpo.tools.clip_tokenizer import offline_clip_tokenizer

        tokenizer = offline_clip_tokenizer()
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=tokenizer.model_max_length,
            n_embd=32,
            n_layer=2,
            n_head=2,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = GPT2LMHeadModel(config)
        return cls(model, tokenizer, name=f"tiny-gpt2-seed{seed}")
