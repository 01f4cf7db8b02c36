"""`arpo eval`: compare prompt-recovery methods on a data set; `arpo eval-set`: make a self-consistent set."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from arpo.app import options as opt
from arpo.core.errors import InvalidInputError
from arpo.core.settings import ArpoSettings, BrainOptions, HistoryOptions, ModelOptions
from arpo.eval.seeds import REFERENCE_SEED_BASE

DEFAULT_METHODS = "caption,ci-fast,arpo-vanilla"
EVAL_HELP = (
    "Run each method once on each image of MANIFEST (a JSONL manifest or a folder of images), searching "
    "with --search-seed; regenerate its prompt with each evaluation seed (1000, 1001, ...: never a search "
    "seed or a reference's seed), score it (CLIP-T, CLIP-I, DINO, ViT, LPIPS, BERTScore, perplexity) and write "
    "table.md/.csv/.json and report.html into --out. Running the same command again continues an "
    "interrupted evaluation. Methods: caption, vlm-caption, ci-fast, ci-classic, ci-best, pez, ph2p, "
    "editor, regressor, arpo-vanilla, arpo-enhanced (arpo-*:offline|vllm|openai picks their brains)."
)


def register(app: typer.Typer) -> None:
    app.command(name="eval", help=EVAL_HELP)(evaluate)
    app.command(name="eval-set", help="Generate a self-consistent evaluation set: one reference per prompt in PROMPTS, with the same T2I model the evaluation will use.")(make_eval_set)


@opt.with_option_groups
def evaluate(
    manifest: Annotated[Path, typer.Argument(help="JSONL manifest ({image, prompt?, id?, source?} per line) or a folder of images.")],
    models: ModelOptions,
    brains: BrainOptions,
    store: HistoryOptions,
    methods: Annotated[str, typer.Option(help="Comma-separated methods to compare.")] = DEFAULT_METHODS,
    seeds: Annotated[int, typer.Option(help="Evaluation seeds: each recovered prompt is rendered and scored "
                                             "with seeds 1000, 1001, ...; scores are mean ± std over them.")] = 3,
    search_seed: Annotated[int, typer.Option(help="Seed the methods search with (below 1000; never scored).")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="Folder for the tables and report (default: arpo-eval-<manifest name>).")] = None,
    metrics: Annotated[str, typer.Option(help="Comma-separated metrics, or all.")] = "all",
    steps: Annotated[Optional[int], typer.Option(help="ARPO rounds per run (default: 10).")] = None,
    inversion_steps: Annotated[Optional[int], typer.Option(help="Optimisation steps of inversion methods.")] = None,
    inversion_seconds: Annotated[Optional[float], typer.Option(help="Wall-time limit per inversion.")] = None,
    regressor: Annotated[Optional[str], typer.Option(help="Regressor checkpoint for the regressor method.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the table as JSON instead of Markdown.")] = False,
    ray: Annotated[Optional[str], typer.Option(help=opt.RAY_HELP, metavar="local|auto|ADDRESS")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Ray workers, each holding its own models (default: one per GPU, else 2).")] = None,
) -> None:
    from arpo.eval.datasets import load_dataset
    from arpo.eval.methods import validate_method_names
    from arpo.eval.metrics.suite import parse_metric_names
    from arpo.eval.seeds import SeedPlan, check_reference_seeds

    method_names = validate_method_names([name.strip() for name in methods.split(",") if name.strip()])
    metric_names = parse_metric_names(metrics)
    plan = SeedPlan.default(seeds, search_seed)
    dataset = load_dataset(manifest)
    # Refused before any model loads: references made with an evaluation or search seed.
    check_reference_seeds(plan, ((case.key, case.generation_seed) for case in dataset.cases))
    settings = ArpoSettings.read()
    config = settings.run_config(
        models, brains, steps=steps, inversion_steps=inversion_steps, inversion_seconds=inversion_seconds,
        regressor=regressor,
    )
    if workers is not None and (ray is None or workers < 1):
        raise InvalidInputError("--workers sets how many Ray workers run the evaluation: give --ray too, and at least 1")
    out_dir = (out or Path(f"arpo-eval-{dataset.location.stem}")).expanduser().resolve()
    where = settings.history_location(store)
    cluster = _Cluster(None if ray == "local" else ray, workers, where.db, where.images) if ray else None
    _run_evaluation(dataset, method_names, metric_names, plan, config, opt.open_history(settings, store), out_dir,
                    as_json, cluster)


@dataclass
class _Cluster:
    """Where `--ray` sends the evaluation's units, and the history its workers open."""

    address: str | None
    workers: int | None
    database_url: str | None
    image_root: str | None


def _run_evaluation(dataset, method_names, metric_names, plan, config, history, out_dir: Path, as_json: bool,
                    cluster: _Cluster | None = None) -> None:
    from arpo.app.reporting import TINY_MODELS_NOTE
    from arpo.eval.methods import MethodContext, build_method
    from arpo.eval.metrics.suite import build_metric_suite
    from arpo.eval.report import table_data, write_report
    from arpo.eval.runner import EvalRunner, stderr_progress
    from arpo.tools.model_stack import model_stack_for
    from arpo.tools.text_to_image import TINY_PRESETS

    store = history.evaluations
    identity = _identity(dataset, method_names, metric_names, plan, config)
    evaluation = store.open_evaluation(str(dataset.location), str(out_dir), identity)
    stderr_progress(f"evaluation {evaluation.id}: {len(dataset.cases)} image(s) × {len(method_names)} method(s) × "
                    f"{len(plan.eval_seeds)} evaluation seed(s) {list(plan.eval_seeds)}, search seed {plan.search_seed} -> {out_dir}")
    cells = store.cells(evaluation.id, status="done")
    if len(cells) < len(dataset.cases) * len(method_names) * len(plan.eval_seeds) and cluster is not None:
        from arpo.eval.ray_eval import run_evaluation_on_ray

        run_evaluation_on_ray(evaluation.id, dataset, method_names, list(metric_names), plan, config, history,
                              database_url=cluster.database_url, image_root=cluster.image_root,
                              address=cluster.address, workers=cluster.workers, progress=stderr_progress)
        cells = store.cells(evaluation.id, status="done")
    elif len(cells) < len(dataset.cases) * len(method_names) * len(plan.eval_seeds):
        # Models are loaded only when some cell is left: a finished evaluation just rewrites its reports.
        stack = model_stack_for(config)
        if stack.is_tiny:
            print(TINY_MODELS_NOTE, file=sys.stderr)
        suite = build_metric_suite(stack.clip, tiny=config.models in TINY_PRESETS, names=metric_names, device=config.device)
        context = MethodContext(models=stack, history=history, base_config=config)
        methods = [build_method(name, context) for name in method_names]
        runner = EvalRunner(history=history, models=stack, suite=suite, methods=methods)
        try:
            cells = runner.run(evaluation.id, dataset, plan)
        except KeyboardInterrupt:
            store.set_status(evaluation.id, "interrupted")
            print("arpo: interrupted; run the same command again to continue this evaluation", file=sys.stderr)
            sys.exit(130)
    else:
        stderr_progress(f"all {len(cells)} cells already done; rewriting the reports")
    data = table_data(evaluation.id, cells, method_names, identity)
    files = write_report(data, cells, history, out_dir, method_names)
    store.set_status(evaluation.id, "finished")
    stderr_progress(f"wrote {files.markdown}, {files.csv}, {files.json} and {files.html}")
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        print(files.markdown.read_text(encoding="utf-8"))


def _identity(dataset, method_names, metric_names, plan, config) -> dict[str, Any]:
    """What must match for a second `arpo eval` into the same folder to continue the first."""
    return {
        "images": [case.key for case in dataset.cases],
        "methods": method_names,
        "metrics": list(metric_names),
        **plan.describe(),
        "run_config": config.model_dump(mode="json"),
    }


def make_eval_set(
    prompts: Annotated[Path, typer.Argument(help="Text file with one prompt per line (or JSONL with a prompt field).")],
    out: Annotated[Path, typer.Option(help="Folder for the images and manifest.jsonl.")],
    models: opt.Models = None,
    seed: Annotated[int, typer.Option(help="Seed of the first image; each next image uses the next seed. The default "
                                           "(one million) keeps references clear of search and evaluation seeds.")] = REFERENCE_SEED_BASE,
    device: opt.Device = None,
    scheduler: opt.Scheduler = None,
    dtype: opt.Dtype = None,
) -> None:
    from arpo.eval.datasets import make_self_consistent_set, read_prompt_lines
    from arpo.tools.model_stack import load_text_to_image

    texts = read_prompt_lines(prompts)
    config = ArpoSettings.read().run_config(
        ModelOptions.chosen(models=models, device=device, scheduler=scheduler, dtype=dtype)
    )
    text_to_image = load_text_to_image(config.models, config.device, scheduler=config.scheduler, dtype=config.dtype)
    if seed < REFERENCE_SEED_BASE:
        print(f"arpo: note: reference seeds below {REFERENCE_SEED_BASE} may collide with search or evaluation "
              "seeds; `arpo eval` refuses references made with one of its seeds", file=sys.stderr)
    dataset = make_self_consistent_set(texts, text_to_image, out, seed=seed)
    print(f"wrote {len(dataset.cases)} reference image(s) and {dataset.location}", file=sys.stderr)
    print(str(dataset.location))
