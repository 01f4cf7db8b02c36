"""Writing a batch's results where other tools can read them: one JSON object per line, and CSV.

Both files hold the same columns, one row per item of the batch in its listed order, so a spreadsheet,
pandas or `jq` all see the same table.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING

from arpo.core.errors import InvalidInputError

if TYPE_CHECKING:
    from arpo.graphs.batch import BatchReport

EXPORT_COLUMNS = (
    "image",
    "ground_truth",
    "status",
    "best_prompt",
    "best_clip_i",
    "best_clip_t",
    "last_prompt",
    "iterations",
    "stopped_because",
    "run_id",
    "error",
    "key",
)
JSONL_NAME = "results.jsonl"
CSV_NAME = "results.csv"


def export_rows(report: BatchReport) -> list[dict]:
    """The report as plain rows with the export columns in their order, in item order."""
    return [{column: getattr(item, column) for column in EXPORT_COLUMNS} for item in report.items]


def write_batch_exports(report: BatchReport, folder: Path) -> tuple[Path, Path]:
    """Write `results.jsonl` and `results.csv` into `folder` (created if needed); return both paths."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InvalidInputError(f"{folder}: cannot create the export folder ({error.strerror or error})") from None
    rows = export_rows(report)
    jsonl_path, csv_path = folder / JSONL_NAME, folder / CSV_NAME
    with jsonl_path.open("w", encoding="utf-8") as jsonl:
        for row in rows:
            jsonl.write(json.dumps(row, ensure_ascii=False) + "\n")
    with csv_path.open("w", encoding="utf-8", newline="") as table:
        writer = csv.DictWriter(table, fieldnames=EXPORT_COLUMNS)
        writer.writeheader()
        # Empty cells for missing values, so a spreadsheet does not show the text "None".
        writer.writerows({column: "" if value is None else value for column, value in row.items()} for row in rows)
    return jsonl_path, csv_path
