"""Training the regressor on (image, prompt) pairs: targets, vocabulary, validation, optional curriculum.

Targets are the prompts' sentence embeddings; word labels come from the vocabulary built on the
training prompts. A fixed share of the pairs is held out, and the mean cosine similarity between
predicted and target embeddings on it is measured before training and after every epoch. With a
curriculum, a first ordinary pass measures each training sample's difficulty, then the model is reset
to its initial weights and trained again for the same number of steps, easy samples first
(see `curriculum`). Optimiser: Adam, as in the paper.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from arpo.core.errors import InvalidInputError
from arpo.tools.regressor.backbones import build_backbone, parse_backbone_spec
from arpo.tools.regressor.model import DEFAULT_VOCABULARY_WEIGHT, PromptRegressor, RegressorConfig, to_device
from arpo.tools.regressor.prompt_bank import PromptBank
from arpo.tools.regressor.vocabulary import DEFAULT_SIZE, Vocabulary
from arpo.training.regressor.curriculum import (
    CURRICULUM_KINDS,
    CurriculumKind,
    curriculum_schedule,
    difficulty_scores,
    split_difficulty,
    stage_batches,
)
from arpo.training.regressor.datasets import ImagePromptPair, open_image
from arpo.training.regressor.losses import cosine_similarities, regressor_loss

# Paper: 1e-4 for ViT/Swin, 5e-6 for CLIP. The tiny random CNN starts from nothing and needs more.
DEFAULT_LEARNING_RATES = {"tiny": 1e-3, "clip": 5e-6, "timm": 1e-4, "unet": 1e-4}
DEFAULT_CACHE_LIMIT = 4096
_IMAGE_READERS = min(8, os.cpu_count() or 1)


@dataclass
class TrainingOptions:
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float | None = None
    """None: the backbone kind's default (`DEFAULT_LEARNING_RATES`)."""
    val_split: float = 0.1
    seed: int = 0
    curriculum: CurriculumKind = "none"
    thresholds: tuple[float, float] | None = None
    """(high, low) cosine thresholds for the "thresholds" curriculum; None picks them from the scores."""
    vocabulary_size: int = DEFAULT_SIZE
    vocabulary_weight: float = DEFAULT_VOCABULARY_WEIGHT
    device: str | None = None
    cache_limit: int = DEFAULT_CACHE_LIMIT
    """Keep prepared inputs of up to this many samples in memory instead of re-reading images."""

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise InvalidInputError("--epochs and --batch-size must be at least 1.")
        if not 0.0 <= self.val_split < 1.0:
            raise InvalidInputError(f"--val-split must be in [0, 1), got {self.val_split}.")
        if self.curriculum not in CURRICULUM_KINDS:
            raise InvalidInputError(f"Unknown curriculum '{self.curriculum}'; use {', '.join(CURRICULUM_KINDS)}.")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise InvalidInputError("--lr must be positive.")


@dataclass
class EpochReport:
    phase: str
    """"difficulty" (the curriculum's first pass) or "train"."""
    epoch: int
    loss: float
    """Mean training loss over the epoch's steps."""
    val_cosine: float | None
    """Mean cosine similarity on the held-out pairs after the epoch (None without a validation split)."""
    stage: str | None = None
    """Curriculum stage at the end of the epoch."""


@dataclass
class TrainingResult:
    model: PromptRegressor
    vocabulary: Vocabulary
    bank: PromptBank
    """Every prompt of the data, with its target embedding: the checkpoint's default retrieval bank."""
    untrained_val_cosine: float | None
    reports: list[EpochReport]
    train_indices: np.ndarray
    val_indices: np.ndarray
    difficulty: np.ndarray | None = None
    """Per training sample (aligned with `train_indices`): mean cosine of the first pass."""
    chunk_sizes: dict[str, int] = field(default_factory=dict)

    @property
    def final_val_cosine(self) -> float | None:
        return self.reports[-1].val_cosine if self.reports else self.untrained_val_cosine

    def summary(self) -> dict[str, Any]:
        """Plain JSON facts about this training, stored in the checkpoint."""
        return {
            "train_pairs": int(len(self.train_indices)),
            "val_pairs": int(len(self.val_indices)),
            "untrained_val_cosine": self.untrained_val_cosine,
            "final_val_cosine": self.final_val_cosine,
            "curriculum_chunks": self.chunk_sizes,
            "epochs": [report.__dict__ for report in self.reports],
        }


OnReport = Callable[[EpochReport], None]


def train_regressor(
    pairs: Sequence[ImagePromptPair],
    *,
    backbone: str,
    space,
    options: TrainingOptions | None = None,
    on_report: OnReport | None = None,
) -> TrainingResult:
    """Train a regressor from `backbone` (a spec) into `space` (a SentenceSpace) on `pairs`."""
    from arpo.tools.devices import pick_device

    options = options or TrainingOptions()
    options.check()
    if len(pairs) < 2:
        raise InvalidInputError("Training needs at least two (image, prompt) pairs.")
    device = pick_device(options.device)
    rng = np.random.default_rng(options.seed)
    train_indices, val_indices = _split(len(pairs), options.val_split, rng)

    prompts = [pair.prompt for pair in pairs]
    targets = torch.from_numpy(space.encode(prompts))
    vocabulary = Vocabulary.build([prompts[index] for index in train_indices], options.vocabulary_size)
    labels = vocabulary.sparse_labels(prompts)

    model = _build_model(backbone, space, vocabulary, options, device)
    samples = _PreparedSamples(pairs, model.backbone, options.cache_limit)
    run = _Run(model, samples, targets, labels, options, device, on_report)
    untrained = run.validation_cosine(val_indices)

    steps_per_epoch = math.ceil(len(train_indices) / options.batch_size)
    difficulty, chunk_sizes = None, {}
    if options.curriculum == "none":
        run.train(_plain_epochs(train_indices, options.epochs, options.batch_size, rng), steps_per_epoch, val_indices)
    else:
        initial_state = copy.deepcopy(model.state_dict())
        cosines = run.difficulty_pass(train_indices, val_indices, rng)
        difficulty = difficulty_scores(cosines)
        split = split_difficulty(options.curriculum, difficulty, options.thresholds)
        chunk_sizes = split.sizes()
        model.load_state_dict(initial_state)
        run.reset_optimizer()
        stages = curriculum_schedule(split, options.epochs * steps_per_epoch)
        for stage in stages:  # positions within the training split -> sample indices
            stage.pool = train_indices[stage.pool]
        run.train(stage_batches(stages, options.batch_size, rng), steps_per_epoch, val_indices)

    bank = _data_bank(prompts, targets.numpy(), space.name)
    result = TrainingResult(
        model, vocabulary, bank, untrained, run.reports, train_indices, val_indices, difficulty, chunk_sizes
    )
    model.config.extra["training"] = result.summary()
    return result


def _build_model(backbone: str, space, vocabulary: Vocabulary, options: TrainingOptions, device) -> PromptRegressor:
    parsed = parse_backbone_spec(backbone)
    built = build_backbone(parsed.text, device=options.device, seed=options.seed)
    config = RegressorConfig(
        backbone=parsed.text,
        target_space=space.name,
        embedding_dim=int(space.dim),
        vocabulary_size=len(vocabulary),
        vocabulary_weight=options.vocabulary_weight,
        seed=options.seed,
        extra={"backbone": built.describe(), "vocabulary_method": vocabulary.method},
    )
    return PromptRegressor(built, config).to(device)


def _split(count: int, val_split: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(count)
    val_count = min(count - 1, max(1, round(count * val_split))) if val_split > 0 else 0
    return np.sort(order[val_count:]), np.sort(order[:val_count])


def _plain_epochs(indices: np.ndarray, epochs: int, batch_size: int, rng) -> Iterable[tuple[str | None, np.ndarray]]:
    for _ in range(epochs):
        order = rng.permutation(indices)
        for start in range(0, len(order), batch_size):
            yield None, order[start : start + batch_size]


def _data_bank(prompts: Sequence[str], targets: np.ndarray, space_name: str) -> PromptBank:
    first_positions: dict[str, int] = {}
    for position, prompt in enumerate(prompts):
        first_positions.setdefault(prompt.strip(), position)
    return PromptBank(list(first_positions), targets[list(first_positions.values())], space_name)


class _PreparedSamples:
    """Backbone inputs per sample, prepared on first use and kept in memory up to a limit."""

    def __init__(self, pairs: Sequence[ImagePromptPair], backbone, cache_limit: int):
        self.pairs = pairs
        self.backbone = backbone
        self.cache_limit = cache_limit
        self.cache: dict[int, dict[str, torch.Tensor]] = {}

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        missing = [int(index) for index in indices if int(index) not in self.cache]
        fresh = {}
        if missing:
            with ThreadPoolExecutor(max_workers=_IMAGE_READERS) as readers:  # decoding releases the GIL
                images = list(readers.map(open_image, [self.pairs[index].image for index in missing]))
            prepared = self.backbone.prepare(images)
            for row, index in enumerate(missing):
                fresh[index] = {name: tensor[row : row + 1] for name, tensor in prepared.items()}
            # Keep what fits under the limit, so a data set larger than the limit still reuses the
            # preparation of its first samples instead of redoing every sample on every pass.
            room = self.cache_limit - len(self.cache)
            self.cache.update(list(fresh.items())[: max(room, 0)])
        rows = [self.cache.get(int(index)) or fresh[int(index)] for index in indices]
        return {name: torch.cat([row[name] for row in rows]) for name in rows[0]}


class _Run:
    """One model's optimisation state and its epoch reports."""

    def __init__(self, model, samples, targets, labels, options: TrainingOptions, device, on_report):
        self.model = model
        self.samples = samples
        self.targets = targets
        self.labels = labels
        self.options = options
        self.device = device
        self.on_report = on_report
        self.reports: list[EpochReport] = []
        kind = parse_backbone_spec(model.config.backbone).kind
        self.learning_rate = options.learning_rate or DEFAULT_LEARNING_RATES[kind]
        self.reset_optimizer()

    def reset_optimizer(self) -> None:
        trainable = [parameter for parameter in self.model.parameters() if parameter.requires_grad]
        self.optimizer = torch.optim.Adam(trainable, lr=self.learning_rate)

    def step(self, indices: np.ndarray) -> float:
        self.model.train()
        output = self.model(to_device(self.samples.batch(indices), self.device))
        loss = regressor_loss(
            output.embedding,
            output.vocabulary_logits,
            self.targets[indices].to(self.device),
            torch.from_numpy(self.labels[indices].toarray()).to(self.device),
            self.options.vocabulary_weight,
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        self.optimizer.step()
        return float(loss.total.detach())

    def cosines(self, indices: np.ndarray) -> np.ndarray:
        """Per-sample cosine similarity of predicted and target embeddings, in eval mode."""
        self.model.eval()
        values = []
        with torch.inference_mode():
            for start in range(0, len(indices), self.options.batch_size):
                chunk = indices[start : start + self.options.batch_size]
                embedding = self.model(to_device(self.samples.batch(chunk), self.device)).embedding
                values.append(cosine_similarities(embedding.float(), self.targets[chunk].to(self.device)).cpu())
        return torch.cat(values).numpy() if values else np.zeros(0, dtype=np.float32)

    def validation_cosine(self, val_indices: np.ndarray) -> float | None:
        return float(self.cosines(val_indices).mean()) if len(val_indices) else None

    def train(self, batches: Iterable[tuple[str | None, np.ndarray]], steps_per_epoch: int, val_indices, phase="train"):
        losses, epoch, stage = [], 0, None
        for stage, batch in batches:
            losses.append(self.step(batch))
            if len(losses) == steps_per_epoch:
                epoch += 1
                self._report(phase, epoch, losses, val_indices, stage)
                losses = []
        if losses:
            self._report(phase, epoch + 1, losses, val_indices, stage)

    def difficulty_pass(self, train_indices: np.ndarray, val_indices: np.ndarray, rng) -> np.ndarray:
        """[epochs, n_train] cosine of every training sample after each epoch of ordinary training."""
        per_epoch = []
        for epoch in range(1, self.options.epochs + 1):
            losses = [self.step(batch) for _, batch in _plain_epochs(train_indices, 1, self.options.batch_size, rng)]
            per_epoch.append(self.cosines(train_indices))
            self._report("difficulty", epoch, losses, val_indices, None)
        return np.stack(per_epoch)

    def _report(self, phase: str, epoch: int, losses: list[float], val_indices, stage: str | None) -> None:
        report = EpochReport(phase, epoch, float(np.mean(losses)), self.validation_cosine(val_indices), stage)
        self.reports.append(report)
        if self.on_report is not None:
            self.on_report(report)
