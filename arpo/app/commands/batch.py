"""`arpo batch`: recover prompts for a folder of images or a manifest, resumably, with a progress bar.

Exit codes: 0 when every item finished; 1 when the batch ran but one or more items failed (each is
listed with its error, in the output and in the exports); 2 for bad input (an unreadable folder or
manifest, a bad flag); 3 when models or brains cannot be had, before any item starts; 130 when
interrupted (run the same command again to go on).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from arpo.app import options
from arpo.core.errors import InvalidInputError
from arpo.core.settings import ArpoSettings, BrainOptions, HistoryOptions, LoopOptions, ModelOptions

if TYPE_CHECKING:
    from arpo.graphs.batch import BatchItemResult, BatchReport

BATCH_HELP = (
    "Recover a prompt for every image of a folder, or of a JSONL/CSV manifest (rows with \"image\", a path "
    "relative to the manifest, and optionally \"ground_truth\"). Running the same batch again skips finished "
    "images and continues interrupted ones from their last checkpoint. Exit code 1 when any image failed."
)


def register(app: typer.Typer) -> None:
    """Add the `batch` command to the arpo CLI."""
    app.command(name="batch", help=BATCH_HELP)(batch)


@options.with_option_groups
def batch(
    source: Annotated[Path, typer.Argument(help="A folder of images, or a .jsonl / .csv manifest.")],
    models: ModelOptions,
    brains: BrainOptions,
    loop: LoopOptions,
    store: HistoryOptions,
    concurrency: Annotated[int, typer.Option(help="Images run at once, in threads sharing one set of models.")] = 1,
    parallel: Annotated[Optional[int], typer.Option(help="Images run at once in lockstep: their renders and CLIP encodings that come together run as one batched forward each, their brain calls concurrently (overrides --concurrency).")] = None,
    export: Annotated[Optional[Path], typer.Option(help="Write results.jsonl and results.csv into this folder.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the batch report as one JSON object.")] = False,
    ray: Annotated[Optional[str], typer.Option(help=options.RAY_HELP, metavar="local|auto|ADDRESS")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Ray workers, each holding its own models (default: one per GPU, else 2).")] = None,
) -> None:
    from arpo.app.batch_export import write_batch_exports

    settings = ArpoSettings.read()
    config = settings.run_config(models, brains, loop)
    if concurrency < 1:
        raise InvalidInputError(f"--concurrency must be at least 1, not {concurrency}")
    if parallel is not None and (parallel < 1 or ray is not None):
        raise InvalidInputError("--parallel runs images in lockstep on this machine: at least 1, and not with --ray")
    if workers is not None and (ray is None or workers < 1):
        raise InvalidInputError("--workers sets how many Ray workers run the batch: give --ray too, and at least 1")
    where = settings.history_location(store)
    with _ProgressBar() as progress:
        common = dict(database_url=where.db, image_root=where.images, on_planned=progress.start, on_item=progress.advance)
        if ray is None:
            from arpo.graphs.batch import run_batch

            report = run_batch(source, config, concurrency=concurrency, parallel=parallel, **common)
        else:
            from arpo.graphs.ray_batch import run_batch_on_ray

            report = run_batch_on_ray(source, config, address=None if ray == "local" else ray, workers=workers, **common)
    if export is not None:
        for path in write_batch_exports(report, export):
            print(f"wrote {path}", file=sys.stderr)
    print(json.dumps(_report_json(report), indent=2) if as_json else _report_text(report))
    if report.failed:
        raise typer.Exit(1)


class _ProgressBar:
    """Items done, failed and remaining, drawn on stderr with rich (redrawn in place on a terminal)."""

    def __enter__(self) -> _ProgressBar:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("batch"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed, {task.fields[remaining]} remaining"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        self._task = None
        self._done = self._failed = self._total = 0
        return self

    def start(self, total: int) -> None:
        self._total = total
        self._progress.start()
        self._task = self._progress.add_task("batch", total=total, failed=0, remaining=total)

    def advance(self, result: BatchItemResult) -> None:
        self._done += 1
        if result.status == "failed":
            self._failed += 1
            self._progress.console.print(f"failed: {result.image}: {result.error}", highlight=False, markup=False, soft_wrap=True)
        self._progress.update(self._task, advance=1, failed=self._failed, remaining=self._total - self._done)

    def __exit__(self, *_exc_info: object) -> None:
        self._progress.stop()


def _report_json(report: BatchReport) -> dict:
    return {
        "batch_id": report.batch_id,
        "source": report.source,
        "finished": report.finished,
        "failed": report.failed,
        "skipped": report.skipped,
        "items": [item.model_dump() for item in report.items],
    }


def _report_text(report: BatchReport) -> str:
    lines = []
    for item in report.items:
        if item.status == "finished":
            score = f"{item.best_clip_i:.4f}" if item.best_clip_i is not None else "-"
            lines.append(f"{item.run_id}  CLIP-I {score}  {item.image}: {item.best_prompt}")
        else:
            lines.append(f"{item.status.upper():>12}  {item.image}: {item.error or ''}")
    lines.append(
        f"batch {report.batch_id}: {report.finished} finished ({report.skipped} already done before), {report.failed} failed"
    )
    return "\n".join(lines)
