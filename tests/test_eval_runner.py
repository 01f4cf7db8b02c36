"""The benchmark runner end to end: `arpo eval` on the tiny stack with a scripted brain writes the
table (Markdown, CSV, JSON), the HTML report and the history; an interrupted evaluation resumes; the
seeds methods search with, the seeds scores are rendered with and the seeds references were made with
never meet."""

from __future__ import annotations

import json
import shutil

import pytest
from cli_harness import run_arpo
from fixtures_brain import brain_server  # noqa: F401  (fixture)
from PIL import Image

from arpo import SAMPLE_IMAGE
from arpo.core.run_config import BrainChoice, RunConfig
from arpo.eval.datasets import load_dataset
from arpo.eval.methods import MethodContext, build_method
from arpo.eval.metrics.suite import build_metric_suite
from arpo.eval.runner import EvalRunner
from arpo.eval.seeds import EVAL_SEED_BASE, REFERENCE_SEED_BASE, SeedPlan
from arpo.graphs.invocation import build_context, start_run
from arpo.storage.history import History
from arpo.tools.model_stack import build_model_stack


@pytest.fixture
def dataset_dir(tmp_path):
    """Two references: the sample photo with a known prompt, and a flat colour without one."""
    folder = tmp_path / "set"
    folder.mkdir()
    shutil.copyfile(SAMPLE_IMAGE, folder / "cat.jpg")
    Image.new("RGB", (40, 40), (200, 120, 40)).save(folder / "orange.png")
    lines = [{"image": "cat.jpg", "prompt": "a tabby cat looking up", "source": "human"},
             {"image": "orange.png", "source": "ai"}]
    (folder / "prompts.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
    return folder


@pytest.fixture
def one_step_tiny_generator(monkeypatch):
    """Tiny pipelines denoise in one step instead of two: these tests count images, not their quality."""
    monkeypatch.setattr("arpo.tools.text_to_image.TINY_STEPS", 1)


def test_arpo_eval_writes_table_report_and_history(capsys, tmp_path, dataset_dir, brain_server, one_step_tiny_generator):
    out = tmp_path / "out"
    args = ["eval", dataset_dir, "--methods", "caption,arpo-vanilla", "--models", "tiny", "--seeds", "2",
            "--steps", "1", "--brain", "vllm", "--base-url", brain_server.base_url, "--out", out]
    outcome = run_arpo(capsys, *args)
    assert outcome.exit_code == 0, outcome.stderr

    table = json.loads((out / "table.json").read_text())
    rows = {row["method"]: row for row in table["rows"]}
    assert list(rows) == ["caption", "arpo-vanilla"]
    for row in rows.values():
        assert row["images"] == 2 and row["eval_seeds"] == [EVAL_SEED_BASE, EVAL_SEED_BASE + 1]
        assert row["metrics"]["clip_i"]["n"] == 4 and row["metrics"]["clip_i"]["std"] is not None
        assert row["metrics"]["bertscore"]["n"] == 2  # only the image with a known prompt
    assert rows["caption"]["cost"]["t2i_calls"] == 0 and rows["caption"]["cost"]["brain_calls"] == 0
    assert rows["arpo-vanilla"]["cost"]["brain_calls"] >= 2 and rows["arpo-vanilla"]["cost"]["t2i_calls"] >= 1
    assert table["metric_models"]["clip_t"] == "tiny-clip-seed0"
    assert set(table["by_source"]) == {"ai", "human"}
    # Defect: the prompt ARPO picked at its search seed was scored at that same seed.
    assert rows["arpo-vanilla"]["search_seeds"] == [0] and rows["caption"]["search_seeds"] == []
    for row in [*table["rows"], *(row for rows_ in table["by_source"].values() for row in rows_)]:
        assert "search_seeds" in row and "eval_seeds" in row
        assert not set(row["search_seeds"]) & set(row["eval_seeds"])
    assert "Protocol:" in table["protocol"] and "1000, 1001" in table["protocol"]

    markdown = (out / "table.md").read_text()
    assert "| Method | CLIP-T ↑ | CLIP-I ↑ | DINO ↑ | ViT ↑ | LPIPS ↓ | BERTScore ↑ | PPL ↓ |" in markdown
    assert markdown.count("| arpo-vanilla |") == 3  # all images, then each source
    assert outcome.stdout.strip().startswith("# Evaluation") and "Protocol: each method" in markdown
    csv_lines = (out / "table.csv").read_text().splitlines()
    assert csv_lines[0] == "subset,method,images,metric,mean,std,n,model"
    assert any(line.startswith("all,caption,2,cost:brain_calls,0.0") for line in csv_lines)

    html = (out / "report.html").read_text()
    assert html.count('<section class="image">') == 2
    assert html.count("<svg") == 2  # one ARPO score plot per image
    for source in [part.split('"')[0] for part in html.split('<img src="')[1:]]:
        assert (out / source).is_file()
    assert "a tabby cat looking up" in html

    history = History.open()
    evaluation_cells = history.evaluations.cells(table["evaluation_id"])
    assert len(evaluation_cells) == 8 and {cell.status for cell in evaluation_cells} == {"done"}
    for cell in evaluation_cells:
        assert cell.seed not in cell.details["search_seeds"] and cell.details["eval_seed"] == cell.seed
    # One search per image and method; its prompt is scored at both evaluation seeds.
    eval_runs = [run for run in history.list_runs(limit=50) if run.kind == "eval"]
    assert len(eval_runs) == 2 and {run.status for run in eval_runs} == {"finished"}
    searched = {history.get_run(run.id).config["seed"] for run in eval_runs}
    assert searched == {0}  # what the loop rendered every iteration with
    arpo_cells = [cell for cell in evaluation_cells if cell.method == "arpo-vanilla"]
    for image in ("cat.jpg", "orange.png"):
        own = [cell for cell in arpo_cells if cell.image_key == image]
        assert len({cell.prompt for cell in own}) == 1 and len({cell.generated_sha256 for cell in own}) == 2
    assert "[8/8]" in outcome.stderr

    # The same command again finds every cell done and only rewrites the reports.
    again = run_arpo(capsys, *args)
    assert again.exit_code == 0, again.stderr
    assert "all 8 cells already done" in again.stderr
    assert json.loads((out / "table.json").read_text())["rows"] == table["rows"]

    # Other settings into the same folder are refused before anything runs.
    other = run_arpo(capsys, *[*args[:-2], "--seeds", "3", "--out", out])
    assert other.exit_code == 2
    assert "holds evaluation" in other.stderr and len(other.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "caption,nonsense"], "unknown method 'nonsense'"),
        (["--seeds", "0"], "--seeds must be at least 1"),
        (["--metrics", "fid"], "unknown metric 'fid'"),
    ],
)
def test_bad_eval_arguments_are_one_line_and_exit_2(capsys, dataset_dir, extra, message):
    outcome = run_arpo(capsys, "eval", dataset_dir, "--models", "tiny", *extra)
    assert outcome.exit_code == 2
    assert message in outcome.stderr and len(outcome.stderr.strip().splitlines()) == 1


def test_missing_manifest_is_exit_2(capsys, tmp_path):
    outcome = run_arpo(capsys, "eval", tmp_path / "nope.jsonl", "--models", "tiny")
    assert outcome.exit_code == 2 and "no such manifest" in outcome.stderr


class _StopAfter:
    """Progress sink that interrupts the evaluation after a number of finished cells."""

    def __init__(self, cells: int) -> None:
        self.left = cells
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        if line.startswith("["):
            self.left -= 1
            if self.left == 0:
                raise KeyboardInterrupt


def test_an_interrupted_evaluation_resumes_where_it_stopped(tmp_path, brain_server, one_step_tiny_generator):
    dataset_dir = tmp_path / "one"
    dataset_dir.mkdir()
    shutil.copyfile(SAMPLE_IMAGE, dataset_dir / "cat.jpg")
    stack = build_model_stack("tiny")
    history = History.open()
    brain = BrainChoice(provider="vllm", base_url=brain_server.base_url)
    config = RunConfig(models="tiny", refine="none", vlm=brain, llm=brain, steps=1)
    context = MethodContext(models=stack, history=history, base_config=config)
    methods = [build_method("caption", context), build_method("arpo-vanilla", context)]
    suite = build_metric_suite(stack.clip, tiny=True, names=["clip_t", "clip_i"])
    dataset = load_dataset(dataset_dir)
    store = history.evaluations
    evaluation = store.open_evaluation(str(dataset.location), "/tmp/out", {"test": 1})

    # An ARPO cell whose run was started and then cut off before it ran: the resume must finish that run.
    cat = dataset.cases[0].load()
    plan = SeedPlan(search_seed=0, eval_seeds=(1000, 1001))
    cut_off = start_run(history, methods[1].run_config(0), cat, build_context(methods[1].run_config(0), history, stack), kind="eval")
    from arpo.storage.evaluations import CellRecord
    store.save_cell(evaluation.id, CellRecord(image_key="cat.jpg", method="arpo-vanilla", seed=1000, status="pending", run_id=cut_off.run_id))

    first = _StopAfter(1)
    with pytest.raises(KeyboardInterrupt):
        EvalRunner(history, stack, suite, methods, progress=first).run(evaluation.id, dataset, plan)
    assert [cell.key for cell in store.cells(evaluation.id, status="done")] == [("cat.jpg", "caption", 1000)]

    second = _StopAfter(0)
    cells = EvalRunner(history, stack, suite, methods, progress=second).run(evaluation.id, dataset, plan)

    assert second.lines[0] == f"resuming evaluation {evaluation.id}: 1 of 4 cells already done"
    finished = [line for line in second.lines if line.startswith("[")]
    assert [line.split("]")[0] + "]" for line in finished] == ["[2/4]", "[3/4]", "[4/4]"]
    assert len(cells) == 4 and all(cell.status == "done" for cell in cells)
    arpo_cells = [c for c in cells if c.method == "arpo-vanilla"]
    assert {c.run_id for c in arpo_cells} == {cut_off.run_id} and history.get_run(cut_off.run_id).status == "finished"
    assert any(line.startswith(f"continuing run {cut_off.run_id}") for line in first.lines + second.lines)
    # The caption recovered before the interruption is reused, with its cost, for the second seed.
    seed_0, seed_1 = sorted((c for c in cells if c.method == "caption"), key=lambda c: c.seed)
    assert seed_1.prompt == seed_0.prompt
    assert seed_1.wall_seconds == seed_0.wall_seconds and seed_1.generated_sha256 != seed_0.generated_sha256
    assert len(history.list_runs(limit=50)) == 1  # the cut-off run was continued, not started again


def test_eval_set_writes_a_self_consistent_manifest(capsys, tmp_path, one_step_tiny_generator):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a lighthouse at dusk\n\n")
    outcome = run_arpo(capsys, "eval-set", prompts, "--models", "tiny", "--out", tmp_path / "set")

    assert outcome.exit_code == 0, outcome.stderr
    manifest = tmp_path / "set" / "manifest.jsonl"
    assert outcome.stdout.strip() == str(manifest.resolve())
    (entry,) = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert (entry["prompt"], entry["source"], entry["model"]) == ("a lighthouse at dusk", "self", "tiny")
    assert (tmp_path / "set" / entry["image"]).is_file()


def test_eval_set_references_are_made_with_seeds_no_evaluation_uses(capsys, tmp_path, one_step_tiny_generator):
    """Defect: reference k was made with seed k, the same noise as evaluation seeds 0-2."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a lighthouse at dusk\na red barn\na blue boat\n")
    outcome = run_arpo(capsys, "eval-set", prompts, "--models", "tiny", "--out", tmp_path / "set")
    assert outcome.exit_code == 0, outcome.stderr
    reference_seeds = {case.generation_seed for case in load_dataset(tmp_path / "set").cases}
    assert reference_seeds == {REFERENCE_SEED_BASE, REFERENCE_SEED_BASE + 1, REFERENCE_SEED_BASE + 2}
    plan = SeedPlan.default()
    assert not reference_seeds & (set(plan.eval_seeds) | {plan.search_seed})


@pytest.mark.parametrize(("reference_seed", "role"), [(1001, "an evaluation seed"), (0, "the search seed")])
def test_references_made_with_an_evaluation_or_search_seed_are_refused(capsys, tmp_path, reference_seed, role):
    folder = tmp_path / "set"
    folder.mkdir()
    Image.new("RGB", (40, 40), (200, 120, 40)).save(folder / "orange.png")
    entry = {"image": "orange.png", "prompt": "an orange square", "generation_seed": reference_seed}
    (folder / "manifest.jsonl").write_text(json.dumps(entry) + "\n")
    outcome = run_arpo(capsys, "eval", folder, "--models", "tiny", "--methods", "caption", "--out", tmp_path / "out")
    assert outcome.exit_code == 2
    assert f"seed {reference_seed}, which is {role}" in outcome.stderr and len(outcome.stderr.strip().splitlines()) == 1


def test_search_seed_cannot_be_an_evaluation_seed(capsys, dataset_dir):
    outcome = run_arpo(capsys, "eval", dataset_dir, "--models", "tiny", "--search-seed", "1000")
    assert outcome.exit_code == 2 and "search seed 1000 is also an evaluation seed" in outcome.stderr


def test_runner_refuses_a_method_that_searched_with_an_evaluation_seed(tmp_path):
    """The runner checks what each method reports it searched with, not only the plan."""
    from arpo.eval.methods import MethodCost, RecoveredPrompt

    class PeekingMethod:
        name, seed_dependent = "peeking", True

        def recover(self, reference, seed, **_):
            return RecoveredPrompt("a cat", MethodCost(), search_seeds=[seed, 1000])

    folder = tmp_path / "one"
    folder.mkdir()
    Image.new("RGB", (40, 40), (10, 20, 30)).save(folder / "dark.png")
    stack = build_model_stack("tiny")
    history = History.open()
    evaluation = history.evaluations.open_evaluation(str(folder), str(tmp_path / "out"), {"test": 2})
    runner = EvalRunner(history, stack, build_metric_suite(stack.clip, tiny=True, names=["clip_t"]), [PeekingMethod()])
    with pytest.raises(RuntimeError, match=r"searched with evaluation seed\(s\) \[1000\]"):
        runner.run(evaluation.id, load_dataset(folder), SeedPlan(search_seed=0, eval_seeds=(1000, 1001)))
    assert history.evaluations.cells(evaluation.id) == []  # nothing was rendered or scored


def test_final_prompt_is_fixed_before_any_evaluation_render(tmp_path, monkeypatch, one_step_tiny_generator):
    """Events in order: each method's search (at the search seed) ends before its prompt is rendered at
    an evaluation seed, and the method is asked once per image, not once per evaluation seed."""
    from arpo.eval.methods import MethodCost, RecoveredPrompt

    events: list[tuple[str, int]] = []
    stack = build_model_stack("tiny")
    real_generate = stack.text_to_image.generate

    def logged_generate(prompt, seed, *args, **kwargs):
        events.append(("render", seed))
        return real_generate(prompt, seed, *args, **kwargs)

    monkeypatch.setattr(stack.text_to_image, "generate", logged_generate)

    class SearchingMethod:
        name, seed_dependent = "searching", True

        def recover(self, reference, seed, **_):
            stack.text_to_image.generate("a first guess", seed)  # a search renders with its own seed
            events.append(("chosen", seed))
            return RecoveredPrompt("a first guess", MethodCost(), search_seeds=[seed])

    folder = tmp_path / "one"
    folder.mkdir()
    Image.new("RGB", (40, 40), (10, 20, 30)).save(folder / "dark.png")
    history = History.open()
    evaluation = history.evaluations.open_evaluation(str(folder), str(tmp_path / "out"), {"test": 3})
    runner = EvalRunner(history, stack, build_metric_suite(stack.clip, tiny=True, names=["clip_t"]), [SearchingMethod()],
                        progress=lambda line: None)
    cells = runner.run(evaluation.id, load_dataset(folder), SeedPlan(search_seed=7, eval_seeds=(1000, 1001, 1002)))

    assert events == [("render", 7), ("chosen", 7), ("render", 1000), ("render", 1001), ("render", 1002)]
    assert sorted(cell.seed for cell in cells) == [1000, 1001, 1002]
    assert all(cell.details["search_seeds"] == [7] for cell in cells)


@pytest.mark.parametrize("scheduler", ["ddim", "pndm", "euler", "euler-a", "dpm++"])
def test_evaluation_renders_with_every_scheduler(capsys, tmp_path, dataset_dir, one_step_tiny_generator, scheduler):
    out = tmp_path / "out"
    args = ["eval", dataset_dir, "--methods", "caption", "--models", "tiny", "--scheduler", scheduler,
            "--seeds", "2", "--out", out]
    outcome = run_arpo(capsys, *args)
    assert outcome.exit_code == 0, outcome.stderr
    clip_i = json.loads((out / "table.json").read_text())["rows"][0]["metrics"]["clip_i"]
    assert clip_i["n"] == 4 and -100 <= clip_i["mean"] <= 100  # reported as 100 × cosine
    if scheduler in ("pndm", "dpm++"):  # the stateful ones: a second evaluation must render the same images
        again = run_arpo(capsys, *args[:-1], tmp_path / "again")
        assert again.exit_code == 0, again.stderr
        assert json.loads((tmp_path / "again" / "table.json").read_text())["rows"][0]["metrics"]["clip_i"] == clip_i
