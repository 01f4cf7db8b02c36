"""The History tab: every session and plain run, filterable; one run's iterations with their images,
prompts and scores; and the result exported as JSON and as a zip of its images.

Also the Edit and render tab's two handlers, which need only the driver and the run id.
"""

from __future__ import annotations

import html
import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from arpo.app.reporting import best_scored
from arpo.core.errors import ArpoError
from arpo.graphs.session_driver import SessionDriver
from arpo.storage.history import History
from arpo.storage.records import RunDetail

RUN_COLUMNS = ["id", "kind", "status", "image", "iterations", "best CLIP-I", "best prompt", "created"]
ITERATION_COLUMNS = ["iteration", "CLIP-I", "CLIP-T", "prompt", "phrases its round kept (→ next prompt)"]
LISTED_RUNS = 500


def run_table(history: History, filter_text: Any = "") -> pd.DataFrame:
    """The newest runs of every kind; a filter keeps rows where every word appears somewhere in the row."""
    words = filter_text.lower().split() if isinstance(filter_text, str) else []
    rows = []
    for run in history.list_runs(limit=LISTED_RUNS):
        best_clip_i, best_prompt = _best_so_far(history, run)
        row = [
            run.id, run.kind, run.status, run.reference_name, run.iterations,
            round(best_clip_i, 4) if best_clip_i is not None else None, best_prompt,
            run.created_at.strftime("%Y-%m-%d %H:%M"),
        ]
        text = " ".join(str(cell) for cell in row).lower()
        if all(word in text for word in words):
            rows.append(row)
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def _best_so_far(history: History, run) -> tuple[float | None, str]:
    """A run's best CLIP-I and prompt; a paused or cut-off run has none stored yet, so they are read
    from its iterations."""
    if run.best_clip_i is not None or not run.iterations:
        return run.best_clip_i, run.best_prompt or ""
    best = best_scored(history.iterations(run.id))
    return (best.clip_i, best.prompt) if best is not None else (None, "")


def export_files(history: History, run_id: Any) -> tuple[Any, str]:
    """The Session tab's Export button: the run's JSON and zip, or a line saying why not."""
    if not isinstance(run_id, str) or not run_id:
        return gr.skip(), "Start or resume a session first."
    try:
        detail = history.get_run(run_id)
    except ArpoError as problem:
        return gr.skip(), f"**Cannot export:** {problem}"
    json_path, zip_path = export_run(history, detail)
    return [str(json_path), str(zip_path)], f"Exported `{detail.id}`: the result as JSON and its images as a zip."


def picked_run_id(event: gr.SelectData) -> str:
    """The id of the row a person clicked in the run table (whichever cell they clicked)."""
    row = getattr(event, "row_value", None) or []
    return str(row[0]) if row else ""


class HistoryHandlers:
    """Open a stored run for browsing and export it; the session tab resumes sessions."""

    def __init__(self, driver: SessionDriver) -> None:
        self.driver = driver

    @property
    def history(self) -> History:
        return self.driver.history

    def open_run(self, run_id: Any):
        """Summary line, reference, gallery of iterations, their table, and the two export files."""
        run_id = run_id.strip() if isinstance(run_id, str) else ""
        if not run_id:
            return "Pick a run in the table, or type its id.", None, [], _empty_iterations(), None, None
        try:
            detail = self.history.get_run(run_id)
        except ArpoError as problem:
            return f"**Cannot open:** {problem}", None, [], _empty_iterations(), None, None
        gallery = [
            (self.history.open_image(record.generated_sha256), f"iteration {record.index} · CLIP-I {record.clip_i:.4f}")
            for record in detail.iterations_detail
        ]
        table = pd.DataFrame(
            [[r.index, round(r.clip_i, 4), round(r.clip_t, 4), r.prompt, ", ".join(r.selected)] for r in detail.iterations_detail],
            columns=ITERATION_COLUMNS,
        )
        json_path, zip_path = export_run(self.history, detail)
        return (_summary(detail), self.history.open_image(detail.reference_sha256), gallery, table,
                str(json_path), str(zip_path))

    # Edit and render tab

    def parts(self, run_id: Any):
        if not isinstance(run_id, str) or not run_id:
            return gr.skip(), gr.skip(), "Start or resume a session first."
        try:
            parts = self.driver.prompt_parts(run_id)
        except ArpoError as problem:
            return gr.skip(), gr.skip(), f"**Cannot split:** {problem}"
        return parts.content, parts.style, "Loaded the best prompt's content and style."

    def render(self, run_id: Any, content: Any, style: Any, replace_old: Any, replace_new: Any):
        if not isinstance(run_id, str) or not run_id:
            return "Start or resume a session first.", gr.skip()
        content, style, old, new = (value.strip() if isinstance(value, str) else "" for value in (content, style, replace_old, replace_new))
        if new and not old:
            return "Type the word to replace as well as its replacement.", gr.skip()
        if old and (len(old.split()) != 1 or len(new.split()) != 1):
            return "Replace takes one word and one replacement word.", gr.skip()
        try:
            render = self.driver.render_edit(
                run_id, content=content or None, style=style or None, replace=(old, new) if old else None
            )
        except ArpoError as problem:
            return f"**Cannot render:** {problem}", gr.skip()
        gallery = [(self.history.open_image(item.image_sha256), item.prompt) for item in self.history.renders(run_id)]
        return f"Rendered with seed {render.seed}: {html.escape(render.prompt)}", gallery


def export_run(history: History, detail: RunDetail) -> tuple[Path, Path]:
    """The run as `arpo-RUN.json` (record, session replies, renders) and `arpo-RUN-images.zip`
    (reference, every iteration's image, every render, and the same JSON), in a fresh folder."""
    folder = Path(tempfile.mkdtemp(prefix=f"arpo-export-{detail.id}-"))
    result = {
        "run": detail.model_dump(mode="json"),
        "session_turns": [turn.model_dump(mode="json") for turn in history.session_turns(detail.id)],
        "renders": [render.model_dump(mode="json") for render in history.renders(detail.id)],
    }
    json_path = folder / f"arpo-{detail.id}.json"
    json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    zip_path = folder / f"arpo-{detail.id}-images.zip"
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as archive:  # PNGs are compressed already
        archive.write(history.image_path(detail.reference_sha256), "reference.png")
        for record in detail.iterations_detail:
            archive.write(history.image_path(record.generated_sha256), f"iteration-{record.index:03d}.png")
        for number, render in enumerate(result["renders"], start=1):
            archive.write(history.image_path(render["image_sha256"]), f"render-{number:03d}.png")
        archive.write(json_path, json_path.name)
    return json_path, zip_path


def _summary(detail: RunDetail) -> str:
    best = f"{detail.best_clip_i:.4f}" if detail.best_clip_i is not None else "–"
    line = (f"**{detail.kind}** `{detail.id}` · {detail.status} · {detail.iterations} iteration(s) · best CLIP-I {best}"
            f"{' · ' + detail.stopped_because if detail.stopped_because else ''}")
    if detail.best_prompt:
        line += f"\n\nBest prompt: {html.escape(detail.best_prompt)}"
    if detail.kind == "session":
        line += "\n\nResume it in the Session tab with **Resume this session**."
    elif detail.status not in ("finished",):
        line += f"\n\nA {detail.kind} run is finished at the terminal: `arpo resume {detail.id}`."
    return line


def _empty_iterations() -> pd.DataFrame:
    return pd.DataFrame([], columns=ITERATION_COLUMNS)
