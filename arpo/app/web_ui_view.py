"""What the web UI shows for one round of a session or run: status line, prompt, candidates, plot.

Pure functions of the stored history (iterations, session turns, the pending pause), so the page
always describes the round it shows, whether that is the live pause or an earlier round picked from
the round list, and a plain run from the history browser reads the same way as a session.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from arpo.core.phrases import phrase_key, prompt_phrases
from arpo.storage.records import CandidateRecord, IterationRecord, SessionTurnRecord

SCORE_HEADER = "score (CLIP, prompt so far + phrase)"
CANDIDATE_COLUMNS = ["phrase", SCORE_HEADER, "selected", "reason"]
SCORE_NOTE = (
    "Each score is the CLIP similarity between the reference image and the prompt *as it stood when that "
    "phrase was tried* (the round's earlier kept phrases included), so a kept phrase can score below a "
    "dropped one tried against a different prompt."
)
PERSON_MADE = {"edit": "edited prompt", "pin": "pinned phrases"}


@dataclass
class Screen:
    """One update of the session tab; fields left as `gr.skip()` keep what the page shows."""

    run_id: Any = field(default_factory=gr.skip)
    status: Any = field(default_factory=gr.skip)
    generated: Any = field(default_factory=gr.skip)
    prompt: Any = field(default_factory=gr.skip)
    candidates: Any = field(default_factory=gr.skip)
    candidates_note: Any = field(default_factory=gr.skip)
    plot: Any = field(default_factory=gr.skip)
    edited_prompt: Any = field(default_factory=gr.skip)
    best_prompt: Any = field(default_factory=gr.skip)
    round: Any = field(default_factory=gr.skip)
    reference: Any = field(default_factory=gr.skip)
    renders: Any = field(default_factory=gr.skip)
    """The Edit and render tab's gallery, for renders asked for in the reply box."""

    def values(self) -> list[Any]:
        return [getattr(self, name) for name in SCREEN_FIELDS]


SCREEN_FIELDS = list(Screen.__dataclass_fields__)


def round_candidates(
    records: dict[int, IterationRecord], turns: list[SessionTurnRecord], index: int
) -> tuple[list[CandidateRecord], str]:
    """The candidate phrases that belong to iteration `index`, and a line saying which round they are.

    A round tried on iteration k-1's prompt made iteration k's prompt; iteration 0 and prompts a person
    wrote (edit, pin) had no round, so their table is empty instead of showing an older one.
    """
    own = records[index].candidates if index in records else []
    if own and not any(candidate.selected for candidate in own):
        return own, f"The round tried on iteration {index}'s prompt kept none of these phrases. {SCORE_NOTE}"
    if index == 0:
        return [], "Iteration 0 is the starting prompt; no phrases were tried for it."
    for turn in turns:
        if turn.iteration_index == index - 1 and turn.action in PERSON_MADE:
            return [], f"Iteration {index}'s prompt is your {PERSON_MADE[turn.action]}; no phrases were tried for it."
    earlier = records.get(index - 1)
    if earlier is None or not earlier.candidates:
        return [], f"No candidate phrases are stored for iteration {index}."
    return earlier.candidates, (
        f"The phrases tried on iteration {index - 1}'s prompt; the selected ones made iteration {index}'s prompt. "
        f"{SCORE_NOTE}"
    )


def candidate_frame(candidates: list[CandidateRecord]) -> pd.DataFrame:
    rows = [
        [c.phrase, round(c.score, 4) if c.score is not None else None, "yes" if c.selected else "no", c.reason]
        for c in candidates
    ]
    return pd.DataFrame(rows, columns=CANDIDATE_COLUMNS)


def score_plot(iterations: list[IterationRecord], shown: int | None = None) -> Figure:
    """CLIP-I and CLIP-T over iterations, from iteration 0, with whole-number ticks and markers (one
    iteration is still a visible point); the round shown is marked."""
    figure = Figure(figsize=(5, 3), dpi=90, layout="constrained")
    axes = figure.add_subplot()
    indexes = [record.index for record in iterations]
    axes.plot(indexes, [record.clip_i for record in iterations], marker="o", label="CLIP-I (image–image)")
    axes.plot(indexes, [record.clip_t for record in iterations], marker="s", label="CLIP-T (prompt–image)")
    if shown is not None:
        axes.axvline(shown, color="grey", linestyle=":", linewidth=1)
    axes.set_xlim(-0.25, max(indexes + [1]) + 0.25)
    values = [record.clip_i for record in iterations] + [record.clip_t for record in iterations]
    if values:  # room above and below, so no point sits on the frame
        span = max(max(values) - min(values), 0.1)
        axes.set_ylim(min(values) - 0.1 * span, max(values) + 0.1 * span)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("iteration")
    axes.set_ylabel("score")
    figure.legend(loc="outside lower center", ncols=2, fontsize="small")  # below, never over a point
    axes.grid(alpha=0.3)
    return figure


def prompt_html(prompt: str, previous: str | None) -> str:
    """The prompt with the phrases the previous iteration's prompt lacked highlighted."""
    before = {phrase_key(p) for p in prompt_phrases(previous if previous is not None else prompt)}
    parts = []
    for phrase in prompt_phrases(prompt):
        text = html.escape(phrase)
        parts.append(f'<mark class="new-phrase">{text}</mark>' if phrase_key(phrase) not in before else text)
    return f'<div class="prompt"><strong>Prompt:</strong> {", ".join(parts)}</div>'


def scores_text(record: IterationRecord) -> str:
    return f"CLIP-I {record.clip_i:.4f} · CLIP-T {record.clip_t:.4f}"
