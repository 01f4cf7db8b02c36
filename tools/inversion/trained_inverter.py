"""A trained embedding-to-text model in the vec2text style (Morris et al. 2023), EDITOR's backend (a).

Two small T5 encoder-decoders read a text-encoder output (tokens x width) through a linear adapter:
the zero-step model writes first hypotheses straight from the target embedding; the corrector reads
the target, a hypothesis's own embedding, their difference and the hypothesis's tokens, and writes an
improved prompt. Decoding uses the generator's CLIP tokenizer as the output vocabulary, so whatever
the model writes is a prompt the generator can read. At inversion time beam search proposes several
hypotheses per round and the one whose re-encoding lies nearest the target is kept.

No trained weights exist to download: a model is trained with `arpo.training.inverter`
(days on a GPU for a real text encoder; seconds for the tiny one in the tests) and loaded from its folder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import T5Config, T5ForConditionalGeneration

from arpo.core.errors import InvalidInputError, ModelUnavailableError
from arpo.tools.inversion.embedding_to_text import HypothesisSearch, NextBeam, PromptDistances
from arpo.tools.inversion.vocabulary_projection import decode_tokens

CONFIG_FILE = "inverter.json"
WEIGHTS_FILE = "inverter.pt"


@dataclass
class InverterConfig:
    """Shape of a trained inverter; saved beside its weights."""

    embedding_width: int
    """Width of the text-encoder output it reads (768 for SD 1.5)."""
    vocab_size: int
    start_id: int
    end_id: int
    pad_id: int
    text_encoder: str = "unknown"
    """Which generator's text encoder it was trained on (its embeddings mean nothing for another)."""
    max_tokens: int = 32
    d_model: int = 256
    layers: int = 4
    heads: int = 4
    d_ff: int = 1024
    beams: int = 4
    correction_rounds: int = 3

    @classmethod
    def tiny(cls, **fields: Any) -> InverterConfig:
        """A few-thousand-parameter body for tests (the vocabulary table dominates its size)."""
        return cls(**({"d_model": 32, "layers": 1, "heads": 2, "d_ff": 64, "max_tokens": 12, "beams": 3} | fields))

    def t5_config(self) -> T5Config:
        return T5Config(
            vocab_size=self.vocab_size,
            d_model=self.d_model,
            d_kv=self.d_model // self.heads,
            d_ff=self.d_ff,
            num_layers=self.layers,
            num_decoder_layers=self.layers,
            num_heads=self.heads,
            pad_token_id=self.pad_id,
            eos_token_id=self.end_id,
            decoder_start_token_id=self.start_id,
            dropout_rate=0.0,
        )


class TrainedInverter(torch.nn.Module, HypothesisSearch):
    """Zero-step model plus corrector: the zero-step model writes the first beam, each round the
    corrector rewrites the nearest hypothesis (`HypothesisSearch.recover` runs the rounds)."""

    name = "trained"

    def __init__(self, config: InverterConfig, tokenizer: Any):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.zero_step = T5ForConditionalGeneration(config.t5_config())
        self.corrector = T5ForConditionalGeneration(config.t5_config())
        self.zero_adapter = torch.nn.Linear(config.embedding_width, config.d_model)
        self.corrector_adapter = torch.nn.Linear(config.embedding_width, config.d_model)
        # Tells the corrector which of target / hypothesis / difference a position comes from.
        self.segments = torch.nn.Embedding(3, config.d_model)

    # ---- model inputs ----------------------------------------------------------------------------------

    def zero_step_inputs(self, targets: torch.Tensor) -> torch.Tensor:
        return self.zero_adapter(targets.float())

    def corrector_inputs(self, targets: torch.Tensor, hypotheses: torch.Tensor, hypothesis_ids: torch.Tensor) -> torch.Tensor:
        parts = [targets.float(), hypotheses.float(), (targets - hypotheses).float()]
        adapted = [self.corrector_adapter(part) + self.segments.weight[index] for index, part in enumerate(parts)]
        return torch.cat([*adapted, self.corrector.get_input_embeddings()(hypothesis_ids)], dim=1)

    def labels(self, prompts: Sequence[str]) -> torch.Tensor:
        """Token ids of `prompts` ending in the end token; positions past the end are -100 (ignored)."""
        limit = self.config.max_tokens - 1
        rows = [ids[:limit] + [self.config.end_id] for ids in self.tokenizer(list(prompts), add_special_tokens=False).input_ids]
        width = max(len(row) for row in rows)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for index, row in enumerate(rows):
            labels[index, : len(row)] = torch.tensor(row)
        return labels.to(self.device)

    def hypothesis_ids(self, prompts: Sequence[str]) -> torch.Tensor:
        labels = self.labels(prompts)
        return labels.masked_fill(labels == -100, self.config.pad_id)

    @property
    def device(self) -> torch.device:
        return self.zero_adapter.weight.device

    # ---- generation ------------------------------------------------------------------------------------

    @torch.no_grad()
    def write(self, model: T5ForConditionalGeneration, inputs: torch.Tensor, beams: int) -> list[str]:
        """`beams` distinct prompts from beam search over one input sequence."""
        generated = model.generate(
            inputs_embeds=inputs,
            attention_mask=torch.ones(inputs.shape[:2], dtype=torch.long, device=inputs.device),
            num_beams=beams,
            num_return_sequences=beams,
            max_new_tokens=self.config.max_tokens,
            do_sample=False,
        )
        texts = [self.decode(row) for row in generated]
        return list(dict.fromkeys(text for text in texts if text))

    def decode(self, ids: torch.Tensor) -> str:
        special = {self.config.start_id, self.config.end_id, self.config.pad_id}
        return decode_tokens(self.tokenizer, [int(token) for token in ids.tolist() if int(token) not in special])

    @property
    def rounds(self) -> int:
        return self.config.correction_rounds

    def _begin(
        self, target: torch.Tensor, scores: PromptDistances, start_prompts: Sequence[str]
    ) -> tuple[list[str], NextBeam]:
        """The beam is the one hypothesis nearest so far, of all the model has written."""
        self._check_width(target)
        target = target.to(self.device).float().unsqueeze(0)
        self.eval()
        scores.measure(list(start_prompts) + self.write(self.zero_step, self.zero_step_inputs(target), self.config.beams))

        def correct(beam: list[str]) -> list[str]:
            embedding = scores.encoder.encode_prompts(beam).to(self.device)
            inputs = self.corrector_inputs(target, embedding, self.hypothesis_ids(beam))
            scores.measure(self.write(self.corrector, inputs, self.config.beams))
            return [scores.nearest()]

        return [scores.nearest()], correct

    def _check_width(self, target: torch.Tensor) -> None:
        if target.shape[-1] != self.config.embedding_width:
            raise InvalidInputError(
                f"this inverter reads {self.config.embedding_width}-wide embeddings "
                f"(trained on {self.config.text_encoder}); the generator's are {target.shape[-1]}-wide"
            )

    # ---- saving and loading ---------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2), encoding="utf-8")
        torch.save(self.state_dict(), folder / WEIGHTS_FILE)
        return folder

    @classmethod
    def load(cls, folder: str | Path, tokenizer: Any, device: str | torch.device = "cpu") -> TrainedInverter:
        """A trained inverter from its folder; ModelUnavailableError when there is none there."""
        folder = Path(folder).expanduser()
        if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
            raise ModelUnavailableError(
                f"no trained EDITOR inverter at {folder} (no weights are published to download); train one "
                "with `python -m arpo.training.inverter CORPUS --out FOLDER`, or use EDITOR's "
                "training-free text recovery (the default)"
            )
        config = InverterConfig(**json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8")))
        inverter = cls(config, tokenizer)
        inverter.load_state_dict(torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True))
        return inverter.to(device).eval()

