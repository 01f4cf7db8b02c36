"""What an evaluation writes: the Table 4.2-style table (Markdown, CSV, JSON) and an HTML report.

Each metric's entry is mean ± std over evaluation seeds of the per-seed mean over images, the way the
thesis reports three seeded runs. Evaluation seeds are never seeds a method searched with nor seeds
that made the references (eval/seeds.py); every row records both (`search_seeds`, `eval_seeds`) and
the files state the protocol. Costs are the mean per recovered prompt. When the data set marks images
with a source ("ai", "human"), the table is repeated for each source.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arpo.eval.metrics.scores import LOWER_IS_BETTER, METRIC_LABELS, METRIC_NAMES

if TYPE_CHECKING:
    from arpo.storage.evaluations import CellRecord
    from arpo.storage.history import History

COST_FIELDS = ("wall_seconds", "t2i_calls", "brain_calls", "prompt_tokens", "completion_tokens")
COST_LABELS = {"wall_seconds": "wall s", "t2i_calls": "T2I calls", "brain_calls": "brain calls",
               "prompt_tokens": "prompt tok", "completion_tokens": "completion tok"}


@dataclass
class ReportFiles:
    markdown: Path
    csv: Path
    json: Path
    html: Path


def summarize(cells: Sequence[CellRecord], methods: Sequence[str]) -> list[dict[str, Any]]:
    """One row per method: metric -> {mean, std, n} and cost -> mean per recovered prompt."""
    rows = []
    for method in methods:
        own = [cell for cell in cells if cell.method == method]
        if not own:
            continue
        rows.append({
            "method": method,
            "images": len({cell.image_key for cell in own}),
            "search_seeds": sorted({seed for cell in own for seed in cell.details.get("search_seeds", [])}),
            "eval_seeds": sorted({cell.seed for cell in own}),
            "metrics": {metric: _over_seeds(own, metric) for metric in METRIC_NAMES if _has(own, metric)},
            "cost": {name: statistics.fmean(getattr(cell, name) for cell in own) for name in COST_FIELDS},
        })
    return rows


def _has(cells: Iterable[CellRecord], metric: str) -> bool:
    return any(metric in cell.scores for cell in cells)


def _over_seeds(cells: Sequence[CellRecord], metric: str) -> dict[str, float | int | None]:
    per_seed: dict[int, list[float]] = defaultdict(list)
    for cell in cells:
        if metric in cell.scores:
            per_seed[cell.seed].append(float(cell.scores[metric]["value"]))
    seed_means = [statistics.fmean(values) for values in per_seed.values()]
    std = statistics.stdev(seed_means) if len(seed_means) > 1 else None
    return {"mean": statistics.fmean(seed_means), "std": std, "n": sum(len(v) for v in per_seed.values())}


def metric_models(cells: Iterable[CellRecord]) -> dict[str, str]:
    """Metric -> the model(s) that computed it, as recorded in the cells."""
    found: dict[str, set[str]] = defaultdict(set)
    for cell in cells:
        for metric, score in cell.scores.items():
            found[metric].add(score["model"])
    return {metric: ", ".join(sorted(found[metric])) for metric in METRIC_NAMES if metric in found}


def protocol_statement(cells: Sequence[CellRecord]) -> str:
    """One paragraph saying how the scores were obtained, with the seeds actually used."""
    search = sorted({seed for cell in cells for seed in cell.details.get("search_seeds", [])})
    evaluation = sorted({cell.seed for cell in cells})
    references = sorted({cell.details["reference_seed"] for cell in cells if cell.details.get("reference_seed") is not None})
    made = f"seeds {_seed_list(references)}" if references else "seeds not recorded"
    return (
        f"Protocol: each method recovered one prompt per image, searching with seed(s) {_seed_list(search) or 'none'} "
        "and choosing its final prompt from its own renders at those seeds only. That prompt was then rendered "
        f"with evaluation seeds {_seed_list(evaluation)}, which no method searched with and no reference "
        f"was made with (references: {made}). Each entry is mean ± std over the evaluation seeds of the "
        "per-seed mean over images; costs are per recovered prompt."
    )


def _seed_list(seeds: Sequence[int]) -> str:
    if len(seeds) > 6 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(str(seed) for seed in seeds)


def table_data(evaluation_id: str, cells: Sequence[CellRecord], methods: Sequence[str], config: dict[str, Any]) -> dict[str, Any]:
    """Everything the table files hold, as one JSON-ready object."""
    sources = sorted({cell.details.get("source") for cell in cells if cell.details.get("source")})
    data: dict[str, Any] = {
        "evaluation_id": evaluation_id,
        "protocol": protocol_statement(cells),
        "config": config,
        "metric_models": metric_models(cells),
        "lower_is_better": sorted(LOWER_IS_BETTER),
        "rows": summarize(cells, methods),
    }
    if len(sources) > 1:
        data["by_source"] = {
            source: summarize([c for c in cells if c.details.get("source") == source], methods) for source in sources
        }
    return data


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table: "mean ± std" per metric, then the mean costs."""
    table = _table_cells(rows)
    header = table["header"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table["rows"]]
    return "\n".join(lines) + "\n"


def _metric_heading(metric: str) -> str:
    return f"{METRIC_LABELS[metric]} {'↓' if metric in LOWER_IS_BETTER else '↑'}"


def _mean_std(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "–"
    digits = 4 if abs(entry["mean"]) < 10 else 2
    if entry["std"] is None:
        return f"{entry['mean']:.{digits}f}"
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def _cost(name: str, value: float) -> str:
    return f"{value:.2f}" if name == "wall_seconds" else f"{value:.1f}"


def write_tables(data: dict[str, Any], out_dir: Path) -> tuple[Path, Path, Path]:
    """table.md, table.csv and table.json in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = [f"# Evaluation {data['evaluation_id']}\n", data["protocol"] + "\n", markdown_table(data["rows"])]
    for source, rows in data.get("by_source", {}).items():
        markdown += [f"\n## Images from source: {source}\n", markdown_table(rows)]
    markdown.append("\nModels: " + "; ".join(f"{METRIC_LABELS[m]}: {model}" for m, model in data["metric_models"].items()) + "\n")
    md_path = out_dir / "table.md"
    md_path.write_text("\n".join(markdown), encoding="utf-8")
    csv_path = out_dir / "table.csv"
    csv_path.write_text(_csv_text(data), encoding="utf-8")
    json_path = out_dir / "table.json"
    json_path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return md_path, csv_path, json_path


def _csv_text(data: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["subset", "method", "images", "metric", "mean", "std", "n", "model"])
    subsets = [("all", data["rows"]), *data.get("by_source", {}).items()]
    for subset, rows in subsets:
        for row in rows:
            for metric, entry in row["metrics"].items():
                writer.writerow([subset, row["method"], row["images"], metric, entry["mean"],
                                 "" if entry["std"] is None else entry["std"], entry["n"],
                                 data["metric_models"].get(metric, "")])
            for name in COST_FIELDS:
                writer.writerow([subset, row["method"], row["images"], f"cost:{name}", row["cost"][name], "", "", ""])
    return buffer.getvalue()


def write_report(
    data: dict[str, Any], cells: Sequence[CellRecord], history: History, out_dir: Path, methods: Sequence[str]
) -> ReportFiles:
    """The table files plus report.html (images copied into out_dir/images)."""
    md_path, csv_path, json_path = write_tables(data, out_dir)
    html_path = out_dir / "report.html"
    html_path.write_text(render_html(data, cells, history, out_dir, methods), encoding="utf-8")
    return ReportFiles(md_path, csv_path, json_path, html_path)


def render_html(data: dict[str, Any], cells: Sequence[CellRecord], history: History, out_dir: Path, methods: Sequence[str]) -> str:
    """The HTML report: the table, then per image the reference, each method's images, prompts and plots."""
    import jinja2

    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)

    def image_link(sha256: str | None) -> str | None:
        if not sha256:
            return None
        target = images_dir / f"{sha256}.png"
        if not target.exists():
            shutil.copyfile(history.image_path(sha256), target)
        return f"images/{sha256}.png"

    by_image: dict[str, list[CellRecord]] = defaultdict(list)
    for cell in cells:
        by_image[cell.image_key].append(cell)
    sections = []
    for image_key, own in by_image.items():
        groups = []
        for method in methods:
            method_cells = sorted((c for c in own if c.method == method), key=lambda c: c.seed)
            if not method_cells:
                continue
            groups.append({
                "method": method,
                "cells": [{"seed": c.seed, "prompt": c.prompt, "image": image_link(c.generated_sha256),
                           "scores": _shown_scores(c), "run_id": c.run_id} for c in method_cells],
                "plot": trajectory_svg(method, method_cells),
            })
        sections.append({"key": image_key, "reference": image_link(own[0].reference_sha256),
                         "ground_truth": own[0].ground_truth, "groups": groups})
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = environment.from_string(_HTML_TEMPLATE)
    return template.render(data=data, table=_table_cells(data["rows"]), sections=sections,
                           labels=METRIC_LABELS, by_source={s: _table_cells(r) for s, r in data.get("by_source", {}).items()})


def _shown_scores(cell: CellRecord) -> str:
    parts = []
    for metric in METRIC_NAMES:
        if metric in cell.scores:
            value = cell.scores[metric]["value"]
            parts.append(f"{METRIC_LABELS[metric]} {value:.4g}")
    return " · ".join(parts)


def _table_cells(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Header and cell texts of the summary table, shared by the Markdown and the HTML report."""
    metrics = [metric for metric in METRIC_NAMES if any(metric in row["metrics"] for row in rows)]
    return {
        "header": ["Method", *(_metric_heading(m) for m in metrics), *(COST_LABELS[n] for n in COST_FIELDS)],
        "rows": [[row["method"], *(_mean_std(row["metrics"].get(m)) for m in metrics),
                  *(_cost(n, row["cost"][n]) for n in COST_FIELDS)] for row in rows],
    }


def trajectory_svg(method: str, cells: Sequence[CellRecord]) -> str | None:
    """An inline SVG of the scores along each search's iterations (ARPO: CLIP-I and CLIP-T; inversion:
    loss), or None when the method has no trajectory."""
    # Every evaluation seed's cell carries the same search trajectory: draw each search once.
    searches: dict[str, list] = {}
    for cell in cells:
        if cell.trajectory:
            seeds = cell.details.get("search_seeds") or [cell.seed]
            searches.setdefault(",".join(map(str, seeds)), cell.trajectory)
    series = list(searches.items())
    if not series:
        return None
    from matplotlib.figure import Figure

    keys = [key for key in ("clip_i", "clip_t", "loss") if any(key in point for _, points in series for point in points)]
    figure = Figure(figsize=(4.2, 2.4), dpi=100)
    axes = figure.add_subplot()
    for seed, points in series:
        for key in keys:
            steps = [point["step"] for point in points if point.get(key) is not None]
            values = [point[key] for point in points if point.get(key) is not None]
            if values:
                axes.plot(steps, values, marker="o", markersize=3, label=f"{key} · search seed {seed}")
    axes.set_xlabel("iteration" if "clip_i" in keys else "step")
    axes.set_title(method, fontsize=9)
    axes.legend(fontsize=6)
    axes.tick_params(labelsize=7)
    figure.tight_layout()
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prologue, which is not allowed inside HTML


_HTML_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>arpo evaluation {{ data.evaluation_id }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.image { margin: 2em 0; border-top: 2px solid #888; padding-top: 1em; }
.method { margin: 1em 0 1em 1em; }
.cells { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; max-width: 260px; }
figure img, .reference img { width: 256px; image-rendering: pixelated; }
figcaption { font-size: 0.8em; }
.prompt { font-family: monospace; }
</style></head><body>
<h1>Evaluation {{ data.evaluation_id }}</h1>
<p class="protocol">{{ data.protocol }}</p>
{% macro render_table(t) %}<table><tr>{% for h in t.header %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in t.rows %}<tr>{% for v in row %}<td>{{ v }}</td>{% endfor %}</tr>{% endfor %}</table>{% endmacro %}
{{ render_table(table) }}
{% for source, t in by_source.items() %}<h3>Images from source: {{ source }}</h3>{{ render_table(t) }}{% endfor %}
<p>Models: {% for metric, model in data.metric_models.items() %}{{ labels[metric] }}: {{ model }}{% if not loop.last %}; {% endif %}{% endfor %}</p>
{% for section in sections %}<section class="image"><h2>{{ section.key }}</h2>
<div class="reference">{% if section.reference %}<img src="{{ section.reference }}" alt="reference {{ section.key }}">{% endif %}
{% if section.ground_truth %}<p>Ground truth: <span class="prompt">{{ section.ground_truth }}</span></p>{% endif %}</div>
{% for group in section.groups %}<div class="method"><h3>{{ group.method }}</h3><div class="cells">
{% for cell in group.cells %}<figure>{% if cell.image %}<img src="{{ cell.image }}" alt="{{ group.method }} seed {{ cell.seed }}">{% endif %}
<figcaption>eval seed {{ cell.seed }}{% if cell.run_id %} · run {{ cell.run_id }}{% endif %}<br><span class="prompt">{{ cell.prompt }}</span><br>{{ cell.scores }}</figcaption></figure>{% endfor %}
{% if group.plot %}<div class="plot">{{ group.plot | safe }}</div>{% endif %}
</div></div>{% endfor %}</section>{% endfor %}
</body></html>
"""
