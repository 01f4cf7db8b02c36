"""Training the vec2text-style embedding-to-text inverter on a corpus of prompts.

The corpus is a text file (one prompt per line) or JSONL (objects with a "prompt", "text" or "caption"
field, or bare JSON strings). Each batch of prompts is encoded by the generator's text encoder; the
zero-step model learns to write the prompt back from its embedding, then the corrector learns to turn
the zero-step model's own hypothesis (with its embedding) into the prompt.

    python -m arpo.training.inverter prompts.txt --models sd15 --out inverter/
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from arpo.core.errors import ArpoError, InvalidInputError
from arpo.tools.inversion.diffusion_parts import DiffusionParts
from arpo.tools.inversion.trained_inverter import InverterConfig, TrainedInverter

_TEXT_FIELDS = ("prompt", "text", "caption")


def load_prompt_corpus(path: str | Path) -> list[str]:
    """Prompts from a .txt (one per line) or .jsonl file, blanks dropped; bad lines are named."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"prompt corpus {path} does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix.lower() not in (".jsonl", ".ndjson"):
        prompts = [line.strip() for line in lines if line.strip()]
    else:
        prompts = [prompt for number, line in enumerate(lines, 1) if line.strip() for prompt in [_json_prompt(line, number, path)]]
    if not prompts:
        raise InvalidInputError(f"prompt corpus {path} holds no prompts")
    return prompts


def _json_prompt(line: str, number: int, path: Path) -> str:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        raise InvalidInputError(f"{path}:{number}: not JSON ({error.msg})") from None
    if isinstance(value, dict):
        value = next((value[key] for key in _TEXT_FIELDS if isinstance(value.get(key), str)), None)
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{path}:{number}: expected a string or an object with one of {', '.join(_TEXT_FIELDS)}")
    return value.strip()


@dataclass
class TrainingLog:
    """Loss per optimisation step of each phase."""

    zero_step: list[float] = field(default_factory=list)
    corrector: list[float] = field(default_factory=list)


def train_inverter(
    prompts: Sequence[str],
    parts: DiffusionParts,
    config: InverterConfig,
    *,
    steps: int = 1000,
    corrector_steps: int | None = None,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    on_step: Callable[[str, int, float], None] | None = None,
) -> tuple[TrainedInverter, TrainingLog]:
    """Train both models (zero-step first, then the corrector) and return them with their losses."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inverter = TrainedInverter(config, parts.tokenizer).to(parts.device)
        sampler = random.Random(seed)
        prompts = list(prompts)  # sampled from at every step
        log = TrainingLog()
        optimizer = torch.optim.AdamW(
            [*inverter.zero_step.parameters(), *inverter.zero_adapter.parameters()], lr=lr
        )
        for index in range(steps):
            batch = sampler.choices(prompts, k=batch_size)
            targets = parts.encode_prompts(batch)
            loss = inverter.zero_step(inputs_embeds=inverter.zero_step_inputs(targets), labels=inverter.labels(batch)).loss
            _update(optimizer, loss)
            log.zero_step.append(float(loss.detach()))
            if on_step is not None:
                on_step("zero-step", index, log.zero_step[-1])
        optimizer = torch.optim.AdamW(
            [*inverter.corrector.parameters(), *inverter.corrector_adapter.parameters(), *inverter.segments.parameters()],
            lr=lr,
        )
        for index in range(steps if corrector_steps is None else corrector_steps):
            batch = sampler.choices(prompts, k=batch_size)
            targets = parts.encode_prompts(batch)
            hypotheses = [inverter.write(inverter.zero_step, inverter.zero_step_inputs(t.unsqueeze(0)), 1)[:1] or [""] for t in targets]
            hypotheses = [h[0] for h in hypotheses]
            inputs = inverter.corrector_inputs(targets, parts.encode_prompts(hypotheses), inverter.hypothesis_ids(hypotheses))
            loss = inverter.corrector(inputs_embeds=inputs, labels=inverter.labels(batch)).loss
            _update(optimizer, loss)
            log.corrector.append(float(loss.detach()))
            if on_step is not None:
                on_step("corrector", index, log.corrector[-1])
    return inverter.eval(), log


def _update(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def inverter_config_for(parts: DiffusionParts, size: str, model_name: str) -> InverterConfig:
    """An inverter shape that fits `parts`' text encoder: "tiny" for tests, "small" or "base" for use."""
    start, end, pad = parts.markers
    fields = {
        "embedding_width": parts.embedding_width,
        "vocab_size": int(parts.token_embedding.num_embeddings),
        "start_id": start,
        "end_id": end,
        "pad_id": pad,
        "text_encoder": model_name,
    }
    if size == "tiny":
        return InverterConfig.tiny(**fields)
    if size == "base":  # about T5-base, as in the EDITOR paper
        return InverterConfig(**fields, d_model=768, layers=12, heads=12, d_ff=3072)
    if size == "small":
        return InverterConfig(**fields)
    raise InvalidInputError(f"unknown inverter size '{size}'; choose tiny, small or base")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train EDITOR's embedding-to-text inverter on a prompt corpus.")
    parser.add_argument("corpus", help="text file (one prompt a line) or JSONL of prompts")
    parser.add_argument("--out", required=True, help="folder to write the trained inverter into")
    parser.add_argument("--models", default="sd15", help="generator whose text encoder is inverted (default: sd15)")
    parser.add_argument("--size", default="small", choices=("tiny", "small", "base"))
    parser.add_argument("--steps", type=int, default=1000, help="zero-step training steps")
    parser.add_argument("--corrector-steps", type=int, default=None, help="corrector steps (default: --steps)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    try:
        from arpo.tools.model_stack import load_text_to_image

        prompts = load_prompt_corpus(args.corpus)
        t2i = load_text_to_image(args.models, args.device)
        parts = DiffusionParts(t2i, "EDITOR's trained inverter", sdxl=True)
        config = inverter_config_for(parts, args.size, t2i.name)

        def report(phase: str, index: int, loss: float) -> None:
            if index % 50 == 0:
                print(f"{phase} step {index}: loss {loss:.4f}", file=sys.stderr, flush=True)

        inverter, _ = train_inverter(
            prompts, parts, config, steps=args.steps, corrector_steps=args.corrector_steps,
            batch_size=args.batch_size, lr=args.lr, seed=args.seed, on_step=report,
        )
        print(f"saved to {inverter.save(args.out)}")
    except ArpoError as error:
        print(f"arpo: error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
