"""`arpo session`: a conversation about one image at the terminal, resumable by id."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from arpo import run_options as opt
from arpo.errors import InvalidInputError
from arpo.settings import ArpoSettings

SESSION_HELP = (
    "Hold a conversation about IMAGE: after every regenerated image arpo shows the prompt, its scores and "
    "the candidate phrases, and you reply (Enter to go on, feedback in words, edit, pin, ban, run N, stop; "
    "type help). Leave at any time and pick it up later with --resume ID."
)


def register(app: typer.Typer) -> None:
    """Add the `session` command to the arpo CLI."""
    app.command(name="session", help=SESSION_HELP)(session)


def session(
    image: Annotated[Optional[Path], typer.Argument(help="Reference image (omit with --resume).")] = None,
    resume: Annotated[Optional[str], typer.Option(help="Continue this session (id or unique prefix).")] = None,
    models: opt.Models = None,
    brain: opt.Brain = None,
    vlm_brain: opt.VlmBrain = None,
    llm_brain: opt.LlmBrain = None,
    base_url: opt.BaseUrl = None,
    vlm_base_url: opt.VlmBaseUrl = None,
    llm_base_url: opt.LlmBaseUrl = None,
    vlm: opt.Vlm = None,
    llm: opt.Llm = None,
    framework: opt.Framework = None,
    steps: Annotated[Optional[int], typer.Option(help="Iterations allowed per 'run N' before asking again is forced (default: 10).")] = None,
    seed: opt.Seed = None,
    structured_output: opt.StructuredOutput = None,
    vlm_structured_output: opt.VlmStructuredOutput = None,
    llm_structured_output: opt.LlmStructuredOutput = None,
    max_tokens: opt.MaxTokens = None,
    vlm_max_tokens: opt.VlmMaxTokens = None,
    llm_max_tokens: opt.LlmMaxTokens = None,
    temperature: opt.Temperature = None,
    brain_seed: opt.BrainSeed = None,
    init_prompt: Annotated[Optional[str], typer.Option("--init-prompt", help="Start from this prompt instead of a caption.")] = None,
    clip_model: opt.ClipModel = None,
    captioner: opt.CaptionerModel = None,
    device: opt.Device = None,
    scheduler: opt.Scheduler = None,
    dtype: opt.Dtype = None,
    db: opt.Database = None,
) -> None:
    from arpo.graphs.session_driver import SessionDriver
    from arpo.reporting import print_progress
    from arpo.session_terminal import TerminalSession
    from arpo.storage.history import History

    settings = ArpoSettings()
    if (image is None) == (resume is None):
        raise InvalidInputError("give either an IMAGE to start a session or --resume ID to continue one")
    history = History.open(db or settings.db)
    driver = SessionDriver(history)
    if resume is not None:
        from arpo.reporting import iterations_text

        detail = history.get_run(resume)  # an unknown id is one line before anything prints
        print(f"resuming session {detail.id}; so far:\n{iterations_text(detail, history)}", file=sys.stderr)
        view = driver.resume(detail.id, on_update=print_progress)
    else:
        from arpo.tools.reference_image import load_reference_image

        config = opt.build_run_config(
            settings, models=models, brain=brain, vlm_brain=vlm_brain, llm_brain=llm_brain, base_url=base_url,
            vlm_base_url=vlm_base_url, llm_base_url=llm_base_url, vlm=vlm, llm=llm, framework=framework,
            steps=steps, seed=seed, initial_prompt=init_prompt, structured_output=structured_output,
            vlm_structured_output=vlm_structured_output, llm_structured_output=llm_structured_output,
            max_tokens=max_tokens, vlm_max_tokens=vlm_max_tokens, llm_max_tokens=llm_max_tokens,
            temperature=temperature, brain_seed=brain_seed, clip_model=clip_model, captioner=captioner,
            device=device, scheduler=scheduler, dtype=dtype,
        )
        reference = load_reference_image(image)
        view = driver.start(reference, config, on_update=print_progress)
        print(f"session {view.run_id} started (resume with: arpo session --resume {view.run_id})", file=sys.stderr)
    TerminalSession(driver, input, sys.stdout).converse(view)
