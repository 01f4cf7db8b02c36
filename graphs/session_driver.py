"""Holding a conversation about one image: start a session, answer its pauses, leave and come back.

`SessionDriver` is what the terminal (`arpo session`) and the web UI (`arpo ui`) both use. Each call
runs the session graph until the next pause, where a person must reply, or until it finishes; the
pause is read back from the LangGraph checkpoint, so a session can be picked up by id from another
process days later. It also renders novel images from edits of a session's recovered prompt.
In a session started with `--agent` the agent drives first; the first pause is where it ended, and
from there the person's replies steer the fixed loop as in any session.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from langgraph.types import Command

from arpo.core.errors import InvalidInputError
from arpo.core.phrases import replace_words
from arpo.core.run_config import RunConfig
from arpo.graphs.builder import compile_session_graph
from arpo.graphs.human_turn import HumanTurn
from arpo.graphs.invocation import (
    NodeUpdate,
    RunHandle,
    build_context,
    initial_input,
    load_run,
    open_graph,
    start_run,
    stream_updates,
)
from arpo.storage.records import RenderRecord, RunDetail, SessionTurnRecord
from arpo.tools.prompt_parts import PromptParts, split_prompt

if TYPE_CHECKING:
    from arpo.storage.history import History
    from arpo.tools.model_stack import ModelStack
    from arpo.tools.reference_image import ReferenceImage


@dataclass
class SessionView:
    """Where a session stands: paused for a reply (with what to show), or finished."""

    run_id: str
    pause: dict[str, Any] | None
    """The review payload (prompt, scores, image hashes, candidates) while waiting for a reply."""
    detail: RunDetail
    turns: list[SessionTurnRecord] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.pause is None and self.detail.status == "finished"


class SessionDriver:
    """Starts, advances and resumes sessions against one history, sharing one set of models."""

    def __init__(self, history: History, models: ModelStack | None = None) -> None:
        self.history = history
        self.models = models
        self._handles: dict[str, RunHandle] = {}
        self._lock = threading.Lock()
        self._advancing: set[str] = set()
        """Sessions this process is running now. Their last checkpoint may still show the pause they
        just left: checkpoints are saved while the next node runs."""

    def start(
        self, reference: ReferenceImage, config: RunConfig, *, on_update: NodeUpdate | None = None
    ) -> SessionView:
        """Store a new session and run it to its first pause (after the first generated image)."""
        context = build_context(config, self.history, self._models_for(config))
        self.models = self.models or context.models
        handle = start_run(self.history, config, reference, context, kind="session")
        self._handles[handle.run_id] = handle
        return self._advance(handle, initial_input(handle), on_update)

    def resume(self, run_id: str, *, on_update: NodeUpdate | None = None) -> SessionView:
        """Pick a session up again: its pending pause, or the work it was doing when it was cut off."""
        handle = self._handle(run_id)
        with open_graph(handle, _session_graph(handle)) as (graph, thread):
            snapshot = graph.get_state(thread)
        if not snapshot.values:
            return self._advance(handle, initial_input(handle), on_update)
        if snapshot.next and not _pending_pause(snapshot):
            return self._advance(handle, None, on_update)
        return self.view(handle.run_id)

    def reply(self, run_id: str, turn: HumanTurn, *, on_update: NodeUpdate | None = None) -> SessionView:
        """Answer a paused session and run it to its next pause or its end."""
        handle = self._handle(run_id)
        if self.view(handle.run_id).pause is None:
            raise InvalidInputError(f"session {handle.run_id} is not waiting for a reply")
        return self._advance(handle, Command(resume=turn.model_dump()), on_update)

    def request_pause(self, run_id: str) -> None:
        """Ask a session running unattended (`run N`) in this process to pause at its next review,
        after the image being made, instead of going on; it then waits for a reply as usual."""
        handle = self._handle(run_id)
        handle.context.pause_requests.add(handle.run_id)

    def view(self, run_id: str) -> SessionView:
        """The session as stored: its pending pause (if any), its run record and its transcript."""
        handle = self._handle(run_id)
        with self._lock:
            advancing = handle.run_id in self._advancing
        pause = None
        if not advancing:
            with open_graph(handle, _session_graph(handle)) as (graph, thread):
                pause = _pending_pause(graph.get_state(thread))
        return SessionView(
            run_id=handle.run_id,
            pause=pause,
            detail=self.history.get_run(handle.run_id),
            turns=self.history.session_turns(handle.run_id),
        )

    # Novel images from the recovered prompt (thesis §4.2.3)

    def prompt_parts(self, run_id: str) -> PromptParts:
        """The session's best prompt split into content and style (by the LLM when there is one)."""
        handle = self._handle(run_id)
        prompt = _source_prompt(self.history.get_run(handle.run_id))
        llm = handle.context.brains.llm
        if llm is None:
            return split_prompt(prompt)
        from arpo.agents.prompt_splitter import PromptSplitter

        try:
            return PromptSplitter(llm).split(prompt)
        finally:
            handle.context.save_brain_calls(handle.run_id, None)

    def render_edit(
        self,
        run_id: str,
        *,
        content: str | None = None,
        style: str | None = None,
        replace: tuple[str, str] | None = None,
        parts: PromptParts | None = None,
    ) -> RenderRecord:
        """Render an edit of the recovered prompt with the run's seed and model, and keep it.

        `content` / `style` replace that part; `replace` swaps a word everywhere ("dog" → "cat").
        """
        handle = self._handle(run_id)
        detail = self.history.get_run(handle.run_id)
        parts = parts or self.prompt_parts(handle.run_id)
        edited = PromptParts(
            content=content if content is not None else parts.content,
            style=style if style is not None else parts.style,
        )
        if replace is not None:
            old, new = replace
            edited = PromptParts(
                content=replace_words(edited.content, old, new), style=replace_words(edited.style, old, new)
            )
        prompt = edited.compose()
        if not prompt:
            raise InvalidInputError("the edited prompt is empty; give a content or style part")
        t2i = handle.context.models.text_to_image
        image = t2i.generate(prompt, handle.config.seed)
        stored = self.history.store_image(
            image, role="render", metadata={"seed": handle.config.seed, "model": t2i.name, "prompt": prompt}
        )
        return self.history.record_render(
            handle.run_id,
            RenderRecord(
                source_prompt=_source_prompt(detail),
                content=edited.content,
                style=edited.style,
                prompt=prompt,
                edit=_describe_edit(parts, edited, replace),
                seed=handle.config.seed,
                model=t2i.name,
                image_sha256=stored.sha256,
            ),
        )

    # Internals

    def _advance(self, handle: RunHandle, start: Any, on_update: NodeUpdate | None) -> SessionView:
        with self._lock:
            self._advancing.add(handle.run_id)
        try:
            with open_graph(handle, _session_graph(handle)) as (graph, _thread):
                stream_updates(handle, graph, start, on_update)
        finally:
            with self._lock:
                self._advancing.discard(handle.run_id)
        view = self.view(handle.run_id)
        if view.pause is not None:
            self.history.set_status(handle.run_id, "paused")
            view.detail = self.history.get_run(handle.run_id)
        return view

    def _handle(self, run_id: str) -> RunHandle:
        with self._lock:
            detail = self.history.get_run(run_id)
            if detail.kind != "session":
                raise InvalidInputError(f"run {detail.id} is a {detail.kind} run, not a session")
            if detail.id not in self._handles:
                config = RunConfig.model_validate(detail.config)
                handle = load_run(self.history, detail.id, self._models_for(config))
                self.models = self.models or handle.context.models
                self._handles[detail.id] = handle
            return self._handles[detail.id]

    def _models_for(self, config: RunConfig) -> ModelStack | None:
        """Share the loaded models when a session asks for the same stack; otherwise load its own."""
        if self.models is not None and self.models.name == config.models:
            return self.models
        return None


def _session_graph(handle: RunHandle) -> Callable[[Any], Any]:
    """How the handle's session graph is compiled: with the agent driving first when it asks for one."""
    return partial(compile_session_graph, agent=handle.config.agent)


def _pending_pause(snapshot: Any) -> dict[str, Any] | None:
    """The payload of the interrupt a session is waiting on, if it is waiting."""
    for task in snapshot.tasks:
        for pending in task.interrupts:
            return dict(pending.value)
    return None


def _source_prompt(detail: RunDetail) -> str:
    """The prompt a render starts from: the best so far, or the latest while nothing is best yet."""
    if detail.best_prompt:
        return detail.best_prompt
    if detail.iterations_detail:
        best = max(detail.iterations_detail, key=lambda record: record.clip_i)
        return best.prompt
    raise InvalidInputError(f"run {detail.id} has no prompt to edit yet")


def _describe_edit(before: PromptParts, after: PromptParts, replace: tuple[str, str] | None) -> str:
    changes = []
    if after.content != before.content:
        changes.append(f"content: {after.content}")
    if after.style != before.style:
        changes.append(f"style: {after.style}")
    if replace is not None:
        changes.append(f"replace {replace[0]!r} with {replace[1]!r}")
    return "; ".join(changes) or "no change"
