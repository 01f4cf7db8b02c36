"""The `arpo` command: invert an image, resume a run, browse the history."""

from __future__ import annotations

import atexit
import gc
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from arpo.app import options as opt
from arpo.app.reporting import model_notes
from arpo.core.errors import ArpoError, InvalidInputError
from arpo.core.settings import ArpoSettings, BrainOptions, HistoryOptions, LoopOptions, ModelOptions

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


@app.command(help=f"Recover a prompt for IMAGE. {BRAINS_HELP}")
@opt.with_option_groups
def invert(
    image: Annotated[Path, typer.Argument(help="Reference image (PNG, JPEG, WebP, GIF, TIFF, ...).")],
    models: ModelOptions,
    brains: BrainOptions,
    loop: LoopOptions,
    store: HistoryOptions,
    init_prompt: opt.InitPrompt = None,
    out: opt.Out = None,
    as_json: opt.AsJson = False,
    method: Annotated[Optional[str], typer.Option(help="arpo (the loop) | pez | ph2p | editor | regressor: one inversion method on its own, no brain (default: arpo).")] = None,
    init: Annotated[Optional[str], typer.Option(help="How the loop writes its first prompt: caption | pez | ph2p | editor | regressor (default: caption).")] = None,
    inversion_steps: Annotated[Optional[int], typer.Option(help="Optimisation steps of the inversion method (default: the method's own).")] = None,
    inversion_seconds: Annotated[Optional[float], typer.Option(help="Wall-time limit of the inversion method, in seconds (default: none).")] = None,
    regressor: Annotated[Optional[str], typer.Option(help="Regressor checkpoint (file or folder), for --method/--init regressor.")] = None,
    editor_inverter: Annotated[Optional[str], typer.Option(help="Trained embedding-to-text inverter (folder) for EDITOR (default: the training-free search).")] = None,
    prompt_bank: Annotated[Optional[str], typer.Option(help="File of prompts the regressor's embedding is matched against.")] = None,
) -> None:
    settings = ArpoSettings.read()
    config = settings.run_config(
        models, brains, loop, initial_prompt=init_prompt, method=method, init=init,
        inversion_steps=inversion_steps, inversion_seconds=inversion_seconds, regressor=regressor,
        prompt_bank=prompt_bank, editor_inverter=editor_inverter,
    )
    _check_inversion_options(config)
    _run_invert(image, config, lambda: opt.open_history(settings, store), out, as_json)


def _check_inversion_options(config) -> None:
    """Flag combinations that cannot mean anything, refused before any model loads."""
    if config.method != "arpo" and config.init != "caption":
        raise InvalidInputError("--init chooses the loop's first prompt; it does not combine with --method " + config.method)
    if config.method != "arpo" and config.agent:
        raise InvalidInputError("--agent lets the LLM drive the loop; it does not combine with --method " + config.method)
    if config.method != "arpo" and config.initial_prompt:
        raise InvalidInputError("--init-prompt starts the loop; it does not combine with --method " + config.method)
    if config.initial_prompt and config.init != "caption":
        raise InvalidInputError(f"give either --init-prompt or --init {config.init}, not both")
    if "regressor" in (config.method, config.init) and not config.regressor:
        raise InvalidInputError("the regressor method needs its checkpoint: pass --regressor PATH")


def _finish_single_method(handle, history, out: Path | None, as_json: bool) -> None:
    """Run a --method run's inversion (again from its start when resumed: methods keep no checkpoint)."""
    from arpo.app.reporting import run_result, summary_text
    from arpo.graphs.inversion_run import run_inversion

    if history.get_run(handle.run_id).status != "finished":
        run_inversion(handle, on_step=_print_inversion_step)
    result = run_result(history.get_run(handle.run_id), history, out)
    print(json.dumps(result, indent=2) if as_json else summary_text(result))


def _print_inversion_step(step) -> None:
    if step.step % 50 == 0 or step.prompt is not None and step.details.get("phase") == "embedding-to-text":
        loss = "" if step.loss is None else f"  loss {step.loss:.4f}"
        print(f"step {step.step}{loss}  {step.prompt or ''}".rstrip(), file=sys.stderr, flush=True)


def _run_invert(image: Path, config, open_history, out: Path | None, as_json: bool) -> None:
    from arpo.core.run_config import BrainChoice
    from arpo.graphs.invocation import build_context, start_run
    from arpo.tools.reference_image import load_reference_image

    single_method = config.method != "arpo"
    if single_method:
        # One inversion method asks no brain, so none is built (and no API key is needed).
        config = config.model_copy(update={"vlm": BrainChoice(), "llm": BrainChoice()})
    reference = load_reference_image(image)  # a bad image is refused before any history is opened
    history = open_history()
    context = build_context(config, history)
    for note in model_notes(context.models, config.compile):
        print(note, file=sys.stderr)
    handle = start_run(history, config, reference, context)
    what = f" ({config.method} inversion)" if single_method else ""
    print(f"run {handle.run_id} started{what}; resume with: arpo resume {handle.run_id}", file=sys.stderr)
    if single_method:
        _finish_single_method(handle, history, out, as_json)
    else:
        _execute_and_report(handle, history, out, as_json)


@app.command(help="Finish a run that was interrupted or failed, from its last checkpoint.")
@opt.with_option_groups
def resume(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix), as `arpo history` lists it.")],
    store: HistoryOptions,
    out: opt.Out = None,
    as_json: opt.AsJson = False,
) -> None:
    from arpo.graphs.invocation import load_run

    history = opt.open_history(ArpoSettings.read(), store)
    stored = history.get_run(run_id)
    if stored.kind == "session":
        raise InvalidInputError(f"run {stored.id} is a session; continue it with: arpo session --resume {stored.id}")
    handle = load_run(history, stored.id)
    for note in model_notes(handle.context.models, handle.config.compile):
        print(note, file=sys.stderr)
    print(f"resuming run {handle.run_id}", file=sys.stderr)
    if handle.config.method != "arpo":
        _finish_single_method(handle, history, out, as_json)
        return
    _execute_and_report(handle, history, out, as_json)


def _execute_and_report(handle, history, out: Path | None, as_json: bool) -> None:
    from arpo.app.reporting import print_progress, run_result, summary_text
    from arpo.graphs.invocation import execute_run

    execute_run(handle, on_update=print_progress)
    result = run_result(history.get_run(handle.run_id), history, out)
    print(json.dumps(result, indent=2) if as_json else summary_text(result))


@app.command(help="List past runs, or show one run's iterations.")
@opt.with_option_groups
def history(
    run_id: Annotated[Optional[str], typer.Argument(help="Show this run's iterations.")] = None,
    *,
    store: HistoryOptions,
    limit: Annotated[int, typer.Option(help="How many runs to list.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    from arpo.app.reporting import iterations_text, run_result, runs_table

    runs = opt.open_history(ArpoSettings.read(), store)
    if run_id is None:
        listed = runs.list_runs(limit=limit)
        print(json.dumps([r.model_dump(mode="json") for r in listed], indent=2) if as_json else runs_table(listed))
        return
    detail = runs.get_run(run_id)
    print(json.dumps(run_result(detail, runs), indent=2) if as_json else iterations_text(detail, runs))


# Command groups kept in their own modules: each arpo.app.commands.<name> has `register(app)`, and keeps its
# heavy imports inside the command functions so `arpo --help` stays fast.
# (one line per module below)
from arpo.app.commands import session; session.register(app)  # noqa: E402, E702
from arpo.app.commands import ui; ui.register(app)  # noqa: E402, E702
from arpo.app.commands import batch; batch.register(app)  # noqa: E402, E702
from arpo.app.commands import evaluate; evaluate.register(app)  # noqa: E402, E702
from arpo.app.commands import regressor; regressor.register(app)  # noqa: E402, E702


def main() -> None:
    """Console entry point: arpo errors become one line on stderr and an exit code, not a traceback."""
    # The interpreter's last garbage collection walks every object the models and phrase banks left
    # (measured: 8 s after a tiny run, which also made Ctrl-C look ignored); the process is ending and
    # its memory goes back to the system anyway, so that walk is skipped.
    atexit.register(gc.freeze)
    try:
        app()
    except ArpoError as error:
        print(f"arpo: error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        _say_interrupted()
        sys.exit(130)
    except SystemExit as exit_request:
        # Typer catches Ctrl-C inside a command itself and exits 130 silently; the person still needs
        # to hear that nothing was lost and how to go on.
        if _caused_by_ctrl_c(exit_request):
            _say_interrupted()
        raise
    except Exception as error:  # noqa: BLE001 - the last line of defence for a person at a terminal
        if os.environ.get("ARPO_DEBUG"):
            raise
        print(f"arpo: internal error: {type(error).__name__}: {error} (set ARPO_DEBUG=1 for a traceback)", file=sys.stderr)
        sys.exit(1)


def _say_interrupted() -> None:
    print("arpo: interrupted; what was done is kept (arpo resume RUN_ID finishes a run; a batch goes on when run again)", file=sys.stderr)


def _caused_by_ctrl_c(exit_request: SystemExit) -> bool:
    cause = exit_request.__context__
    while cause is not None:
        if isinstance(cause, KeyboardInterrupt):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


if __name__ == "__main__":
    main()
