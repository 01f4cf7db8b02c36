"""The `arpo` command: invert an image, resume a run, browse the history."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from arpo.errors import ArpoError, InvalidInputError
from arpo.settings import ArpoSettings

app = typer.Typer(
    help="Recover the text prompt behind an image for a text-to-image model (the ARPO loop).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

BRAINS_HELP = (
    "Brains: --brain sets the backend of both roles (openai: OPENAI_API_KEY; vllm: an OpenAI-compatible "
    "server at --base-url, key from VLLM_API_KEY if it needs one; offline: no LLM, candidates from phrase "
    "banks). --vlm-brain / --llm-brain override one role, so a closed VLM can pair with an open LLM."
)
TINY_NOTE = "note: --models tiny runs tiny random models offline; the recovered prompt is meaningless as a prompt."


@app.command(help=f"Recover a prompt for IMAGE. {BRAINS_HELP}")
def invert(
    image: Annotated[Path, typer.Argument(help="Reference image (PNG, JPEG, WebP, GIF, TIFF, ...).")],
    models: Annotated[Optional[str], typer.Option(help="tiny | sd15 | sdxl | pixart | a diffusers id or path.")] = None,
    brain: Annotated[Optional[str], typer.Option(help="Backend of both brain roles: openai | vllm | offline.")] = None,
    vlm_brain: Annotated[Optional[str], typer.Option(help="Backend of the VLM role only.")] = None,
    llm_brain: Annotated[Optional[str], typer.Option(help="Backend of the LLM role only.")] = None,
    base_url: Annotated[Optional[str], typer.Option(help="vLLM/OpenAI-compatible server for both roles (default for vllm: http://127.0.0.1:8000/v1).")] = None,
    vlm_base_url: Annotated[Optional[str], typer.Option(help="Server of the VLM role only.")] = None,
    llm_base_url: Annotated[Optional[str], typer.Option(help="Server of the LLM role only.")] = None,
    vlm: Annotated[Optional[str], typer.Option(help="VLM model name (compares or describes images).")] = None,
    llm: Annotated[Optional[str], typer.Option(help="LLM model name (lists differences, proposes phrases).")] = None,
    framework: Annotated[Optional[str], typer.Option(help="vanilla (one two-image VLM call) | enhanced (describe, then compare).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Maximum proposal rounds (default: 10).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Noise seed for every generation (default: 0).")] = None,
    init_prompt: Annotated[Optional[str], typer.Option("--init-prompt", help="Start from this prompt instead of a caption.")] = None,
    clip_model: Annotated[Optional[str], typer.Option(help="open_clip NAME/PRETRAINED for scoring (default: ViT-L-14/openai).")] = None,
    captioner: Annotated[Optional[str], typer.Option(help="Captioner id for the initial prompt (default: Salesforce/blip2-opt-2.7b).")] = None,
    device: Annotated[Optional[str], typer.Option(help="Torch device (default: best available).")] = None,
    db: Annotated[Optional[str], typer.Option(help="History database URL (default: sqlite under $ARPO_HOME or ~/.local/share/arpo).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Also write the images and result.json into this folder.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
) -> None:
    from arpo.graphs.run_config import BrainChoice, RunConfig

    settings = ArpoSettings()
    default_brain = brain or settings.brain
    try:
        config = RunConfig(
            models=models or settings.models,
            clip_model=clip_model,
            captioner=captioner,
            device=device,
            vlm=BrainChoice(provider=vlm_brain or default_brain, model=vlm or settings.vlm, base_url=vlm_base_url or base_url or settings.base_url),
            llm=BrainChoice(provider=llm_brain or default_brain, model=llm or settings.llm, base_url=llm_base_url or base_url or settings.base_url),
            framework=framework or settings.framework,
            steps=steps if steps is not None else settings.steps,
            seed=seed if seed is not None else settings.seed,
            initial_prompt=init_prompt,
        )
    except ValueError as error:
        raise InvalidInputError(_first_validation_problem(error)) from None
    _run_invert(image, config, db or settings.db, out, as_json)


def _run_invert(image: Path, config, database_url: str | None, out: Path | None, as_json: bool) -> None:
    from arpo.graphs.invocation import build_context, execute_run, start_run
    from arpo.storage.history import History
    from arpo.tools.reference_image import load_reference_image

    reference = load_reference_image(image)
    history = History.open(database_url)
    context = build_context(config, history)
    if context.models.is_tiny:
        print(TINY_NOTE, file=sys.stderr)
    handle = start_run(history, config, reference, context)
    print(f"run {handle.run_id} started (resume with: arpo resume {handle.run_id})", file=sys.stderr)
    _execute_and_report(handle, history, out, as_json)


@app.command(help="Finish a run that was interrupted or failed, from its last checkpoint.")
def resume(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix), as `arpo history` lists it.")],
    db: Annotated[Optional[str], typer.Option(help="History database URL.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Also write the images and result.json into this folder.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
) -> None:
    from arpo.graphs.invocation import load_run
    from arpo.storage.history import History

    history = History.open(db or ArpoSettings().db)
    handle = load_run(history, run_id)
    if handle.context.models.is_tiny:
        print(TINY_NOTE, file=sys.stderr)
    print(f"resuming run {handle.run_id}", file=sys.stderr)
    _execute_and_report(handle, history, out, as_json)


def _execute_and_report(handle, history, out: Path | None, as_json: bool) -> None:
    from arpo.graphs.invocation import execute_run
    from arpo.reporting import print_progress, run_result, summary_text

    execute_run(handle, on_update=print_progress)
    result = run_result(history.get_run(handle.run_id), history, out)
    print(json.dumps(result, indent=2) if as_json else summary_text(result))


@app.command(help="List past runs, or show one run's iterations.")
def history(
    run_id: Annotated[Optional[str], typer.Argument(help="Show this run's iterations.")] = None,
    db: Annotated[Optional[str], typer.Option(help="History database URL.")] = None,
    limit: Annotated[int, typer.Option(help="How many runs to list.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    from arpo.reporting import iterations_text, run_result, runs_table
    from arpo.storage.history import History

    store = History.open(db or ArpoSettings().db)
    if run_id is None:
        runs = store.list_runs(limit=limit)
        print(json.dumps([r.model_dump(mode="json") for r in runs], indent=2) if as_json else runs_table(runs))
        return
    detail = store.get_run(run_id)
    print(json.dumps(run_result(detail, store), indent=2) if as_json else iterations_text(detail))


# Command groups kept in their own modules: each arpo.commands.<name> has `register(app)`, and keeps its
# heavy imports inside the command functions so `arpo --help` stays fast.
# (one line per module below)


def _first_validation_problem(error: ValueError) -> str:
    errors = getattr(error, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return f"invalid value for {where}: {first['msg']}"
    return str(error)


def main() -> None:
    """Console entry point: arpo errors become one line on stderr and an exit code, not a traceback."""
    try:
        app()
    except ArpoError as error:
        print(f"arpo: error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        print("arpo: interrupted; resume later with `arpo resume RUN_ID`", file=sys.stderr)
        sys.exit(130)
    except Exception as error:  # noqa: BLE001 - the last line of defence for a person at a terminal
        if os.environ.get("ARPO_DEBUG"):
            raise
        print(f"arpo: internal error: {type(error).__name__}: {error} (set ARPO_DEBUG=1 for a traceback)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
