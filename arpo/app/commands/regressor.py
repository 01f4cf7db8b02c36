"""`arpo regressor`: train the prompt-embedding regressor, predict prompts with it, adapt it to a domain."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from arpo.core.errors import InvalidInputError

regressor_app = typer.Typer(
    help="The prompt-embedding regressor (Reverse Stable Diffusion): image -> sentence embedding -> nearest prompts.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(regressor_app, name="regressor")


@regressor_app.command(help="Train a regressor on a manifest (JSONL/CSV of image, prompt) or a DiffusionDB folder.")
def train(
    manifest: Annotated[Path, typer.Argument(help="JSONL/CSV manifest, or a DiffusionDB folder / metadata parquet.")],
    out: Annotated[Path, typer.Option(help="Checkpoint folder to write.")],
    backbone: Annotated[str, typer.Option(help="tiny | clip:MODEL/TAG | timm:NAME | unet[:MODELS].")] = "tiny",
    target_space: Annotated[str, typer.Option(help="minilm (all-MiniLM-L6-v2) | tiny | a sentence-transformers id.")] = "minilm",
    epochs: Annotated[int, typer.Option(help="Training epochs (the curriculum's first pass uses as many).")] = 10,
    curriculum: Annotated[str, typer.Option(help="none | thirds | thresholds.")] = "none",
    thresholds: Annotated[Optional[str], typer.Option(help="HIGH,LOW cosine thresholds for --curriculum thresholds (default: from the scores).")] = None,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size.")] = 64,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate (default: by backbone kind).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the split, the initial weights and the batch order.")] = 0,
    val_split: Annotated[float, typer.Option(help="Share of pairs held out for validation.")] = 0.1,
    vocabulary_size: Annotated[int, typer.Option(help="Words in the multi-label vocabulary (m).")] = 1000,
    vocabulary_weight: Annotated[float, typer.Option(help="Weight of the vocabulary loss (λ).")] = 0.1,
    device: Annotated[Optional[str], typer.Option(help="Torch device (default: best available).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the training summary as JSON.")] = False,
) -> None:
    from arpo.tools.regressor.backbones import parse_backbone_spec
    from arpo.tools.regressor.checkpoint import save_checkpoint
    from arpo.tools.regressor.sentence_space import load_sentence_space
    from arpo.training.regressor.datasets import load_training_pairs
    from arpo.training.regressor.loop import TrainingOptions, train_regressor

    options = TrainingOptions(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=lr,
        val_split=val_split,
        seed=seed,
        curriculum=curriculum,  # type: ignore[arg-type]  (checked by TrainingOptions.check)
        thresholds=_parse_thresholds(thresholds),
        vocabulary_size=vocabulary_size,
        vocabulary_weight=vocabulary_weight,
        device=device,
    )
    options.check()
    parse_backbone_spec(backbone)  # a bad spec fails before any data or model is loaded
    pairs = load_training_pairs(manifest)
    print(f"training on {len(pairs)} pairs with backbone {backbone}", file=sys.stderr)
    space = load_sentence_space(target_space, device=device)
    result = train_regressor(pairs, backbone=backbone, space=space, options=options, on_report=_print_epoch)
    folder = save_checkpoint(out, result.model, result.vocabulary, result.bank)
    summary = {"checkpoint": str(folder), **result.summary()}
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"saved {folder} (validation cosine {_number(result.untrained_val_cosine)} untrained -> "
            f"{_number(result.final_val_cosine)} trained)"
        )


@regressor_app.command(help="Predict the nearest prompts for IMAGE with a trained regressor.")
def predict(
    image: Annotated[Path, typer.Argument(help="Image to recover a prompt for.")],
    checkpoint: Annotated[list[Path], typer.Option(help="Checkpoint folder; repeat for an ensemble (median embedding).")],
    prompt_bank: Annotated[Optional[Path], typer.Option(help="File of prompts to match (default: the checkpoint's training prompts).")] = None,
    top_k: Annotated[int, typer.Option(help="How many prompts to list.")] = 5,
    adapter: Annotated[Optional[Path], typer.Option(help="Kernel adapter file from `arpo regressor adapt`.")] = None,
    device: Annotated[Optional[str], typer.Option(help="Torch device (default: best available).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    from arpo.tools.reference_image import load_reference_image
    from arpo.tools.regressor.inverter import RegressorInverter

    if top_k < 1:
        raise InvalidInputError("--top-k must be at least 1.")
    reference = load_reference_image(image)
    inverter = RegressorInverter.from_checkpoint(checkpoint, prompt_bank, device=device, top_k=top_k, adapter=adapter)
    result = inverter.invert(reference.image)
    if as_json:
        print(json.dumps({"image": str(image), "prompt": result.prompt, **result.details}, indent=2))
        return
    for match in result.details["top_k"]:
        print(f"{match['similarity']:.4f}  {match['prompt']}")


@regressor_app.command(help="Fit a domain-adaptive kernel (DAKL) on the training pairs and unlabeled target images.")
def adapt(
    manifest: Annotated[Path, typer.Argument(help="The training manifest (or DiffusionDB folder) the checkpoints learned from.")],
    target: Annotated[Path, typer.Argument(help="Folder of unlabeled target-domain images (or a manifest; its prompts are ignored).")],
    checkpoint: Annotated[list[Path], typer.Option(help="Checkpoint folder; repeat for an ensemble (median embedding).")],
    out: Annotated[Path, typer.Option(help="Adapter file to write (.npz).")],
    clusters: Annotated[int, typer.Option(help="k-means centroids summarising the training set (paper: 10000).")] = 10_000,
    gamma: Annotated[
        Optional[float],
        typer.Option(help="γ of the RBF transform (default: 1 / median anchor distance; the paper's 0.001 "
                          "suits only its own data, see arpo/training/regressor/kernel_fitting.py)."),
    ] = None,
    ridge: Annotated[
        float, typer.Option(help="L2 regularisation of the kernel ridge regression, relative to its Gram matrix's scale.")
    ] = 0.01,
    seed: Annotated[int, typer.Option(help="k-means seed.")] = 0,
    device: Annotated[Optional[str], typer.Option(help="Torch device (default: best available).")] = None,
) -> None:
    from arpo.tools.regressor.inverter import RegressorInverter
    from arpo.tools.regressor.sentence_space import load_sentence_space
    from arpo.training.regressor.datasets import load_training_pairs, open_image
    from arpo.training.regressor.kernel_fitting import fit_kernel_adapter

    if clusters < 1 or (gamma is not None and gamma <= 0) or ridge <= 0:
        raise InvalidInputError("--clusters must be at least 1, --gamma and --ridge positive.")
    pairs = load_training_pairs(manifest)
    target_images = _target_images(target)
    inverter = RegressorInverter.from_checkpoint(checkpoint, device=device)
    space = load_sentence_space(inverter.regressors[0].config.target_space, device=device)
    print(f"embedding {len(pairs)} training and {len(target_images)} target images", file=sys.stderr)
    train_embeddings = inverter.embed([open_image(pair.image) for pair in pairs])
    target_embeddings = inverter.embed([open_image(path) for path in target_images])
    fitted = fit_kernel_adapter(
        train_embeddings,
        space.encode([pair.prompt for pair in pairs]),
        target_embeddings,
        clusters=clusters,
        gamma=gamma,
        ridge=ridge,
        seed=seed,
    )
    fitted.save(out)
    print(
        f"saved {out} ({fitted.centroid_count} centroids, {len(target_images)} target images, "
        f"gamma {fitted.gamma:.4g})"
    )


def _target_images(target: Path) -> list[Path]:
    from arpo.tools.reference_image import IMAGE_SUFFIXES

    if target.is_dir():
        images = sorted(path for path in target.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise InvalidInputError(f"No images in '{target}'.")
        return images
    from arpo.training.regressor.datasets import load_training_pairs

    return [pair.image for pair in load_training_pairs(target)]


def _parse_thresholds(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        high, low = (float(part) for part in text.split(","))
    except ValueError:
        raise InvalidInputError(f"--thresholds must read HIGH,LOW (two numbers), got '{text}'.") from None
    return high, low


def _print_epoch(report) -> None:
    stage = f" stage {report.stage}" if report.stage else ""
    phase = "difficulty pass " if report.phase == "difficulty" else ""
    print(
        f"{phase}epoch {report.epoch}{stage}: loss {report.loss:.4f}, val cosine {_number(report.val_cosine)}",
        file=sys.stderr,
    )


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
