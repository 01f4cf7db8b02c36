"""Agent mode's node: the LLM brain chooses the loop's next step by calling tools (graphs/agent_tools.py).

One run of the `agent` node is one turn: a request with the conversation so far and the tools
offered, then every call of the reply run in order, each answered in the conversation and recorded
in the history as a tool call by the "agent". The conversation lives in the graph state as plain
JSON (`agent_messages`), so the checkpoint after each turn holds everything a resumed run needs to
ask the model exactly what it would have asked; a turn cut short is redone from its request.

What stops the agent:
- it calls finish, or a render reaches the step limit (steps bound the renders after the first);
- a budget (`--max-seconds`, `--max-brain-tokens`) is spent, checked before the request and after
  every call, so the calls still waiting in a reply are answered "not run" and skipped;
- it has used its turns: TURNS_PER_GENERATION for each allowed render, so a model that never renders
  cannot talk forever;
- GIVE_UP_AFTER replies in a row of which nothing could run (words without a tool call, unknown tools,
  bad arguments: each error goes back to the model first): the run then goes on as the fixed loop,
  with a one-line notice in the progress and an agent step "fallback" in the history.
When it stops with a prompt it has changed but not rendered, that prompt is rendered first, so the
best prompt is always chosen by CLIP-I among regenerated images.
"""

from __future__ import annotations

import time

from langgraph.runtime import Runtime

from arpo.agents.agent_role import (
    AgentRole,
    AgentTurn,
    ToolArgumentsError,
    call_arguments,
    no_tool_call_message,
    opening_message,
    remembered,
    tool_message,
)
from arpo.graphs.agent_tools import (
    AgentTool,
    PreparedCall,
    ToolRefused,
    UnknownTool,
    execute,
    generations_left,
    offered_tools,
    prepare,
    refine_tools_offered,
)
from arpo.graphs.context import ArpoContext
from arpo.graphs.state import ArpoState
from arpo.storage.records import ToolCallRecord

GIVE_UP_AFTER = 3
"""Unusable replies in a row after which the fixed loop takes the run over."""
TURNS_PER_GENERATION = 5
"""Turns the agent may take per allowed render (a round is about three: generate, propose, select)."""
NO_TOOL_CALL_STEP = "no_tool_call"
UNKNOWN_TOOL_STEP = "unknown_tool"
FALLBACK_STEP = "fallback"
"""Names of the agent steps that are no tool of its own: a reply in words, a call of a tool that does
not exist (its name is kept in the arguments), and the hand-over to the fixed loop."""
_KEPT_CHARS = 500
"""How much of a reply's words or raw arguments the history keeps."""


def agent(state: ArpoState, runtime: Runtime[ArpoContext]) -> dict:
    """One turn of the agent: ask for the next calls, run them, and say whether it goes on."""
    turn = _Turn(runtime.context, state)
    why = turn.why_stop_before_asking()
    if why is not None:
        return turn.ended(why)
    offered = offered_tools(turn.ctx)
    role = AgentRole(turn.ctx.brains.llm)
    reply = role.next_turn(turn.conversation, [tool.spec(turn.ctx) for tool in offered])
    turn.conversation.append(reply.message)
    prepared = turn.prepare_calls(reply, offered)
    if not prepared:
        role.flag_unusable(reply, "no tool call in the reply could run")
    turn.ctx.save_brain_calls(state["run_id"], state["iteration"])
    usable = turn.run_calls(reply, prepared)
    return turn.done(usable)


class _Turn:
    """The work of one turn: the state as the calls change it, the conversation, and what to report."""

    def __init__(self, ctx: ArpoContext, state: ArpoState) -> None:
        self.ctx, self.state = ctx, state
        self.changes: dict = {}
        self.report: list[str] = []
        self._started = time.perf_counter()
        self.conversation: list[dict] = list(state.get("agent_messages") or [self._opening()])
        self._refused: dict[str, ToolArgumentsError | ToolRefused] = {}
        """Calls (by id) refused before running, with why."""

    @property
    def view(self) -> dict:
        """The state as this turn's calls have left it so far."""
        return {**self.state, **self.changes}

    def why_stop_before_asking(self) -> str | None:
        """A budget spent, or the turns used up: then the agent is not asked again."""
        limit = TURNS_PER_GENERATION * (self.state["max_steps"] + 1)
        if self.state.get("agent_turns", 0) >= limit:
            return f"the agent used all its {limit} turns ({TURNS_PER_GENERATION} per allowed generation)"
        return self._budget_spent()

    def prepare_calls(self, reply: AgentTurn, offered: list[AgentTool]) -> list[PreparedCall]:
        """The reply's calls that name an offered tool with arguments of the right shape; the others
        are kept with their error, to be answered in their turn (a reply in words is answered now)."""
        if not reply.calls:
            self._answer_words(reply, offered)
        prepared = []
        for call in reply.calls:
            try:
                prepared.append(prepare(call, call_arguments(call), offered))
            except (ToolArgumentsError, ToolRefused) as error:
                self._refused[call.id] = error
        return prepared

    def run_calls(self, reply: AgentTurn, prepared: list[PreparedCall]) -> bool:
        """Answer every call of the reply in order, running the prepared ones until the run stops;
        whether any of them ran."""
        ready = {item.call.id: item for item in prepared}
        usable = False
        for call in reply.calls:
            if call.id in self._refused:
                self._answer_refused(call, self._refused[call.id])
                continue
            stop = self.view.get("stopped_because") or self._budget_spent()
            if stop:
                self.changes.setdefault("stopped_because", stop)
                self.conversation.append(tool_message(call, {"error": f"not run: {stop}"}))
                self._record(call.name, ready[call.id].arguments.model_dump(), error=f"not run: {stop}")
                continue
            usable = self._run(ready[call.id]) or usable
        return usable

    def done(self, usable: bool) -> dict:
        """The turn's state update: the calls' changes, the conversation, the strike count, and an end
        when the run stopped or the agent gave up."""
        strikes = 0 if usable else self.state.get("agent_strikes", 0) + 1
        self.changes |= {"agent_turns": self.state.get("agent_turns", 0) + 1, "agent_strikes": strikes}
        stop = self.view.get("stopped_because") or self._budget_spent()
        if stop:
            return self.ended(stop)
        if strikes >= GIVE_UP_AFTER:
            return self._hand_over(strikes)
        return self._update()

    def ended(self, why: str) -> dict:
        """The agent stops and so does the run (in a session: the person is asked). A stop one of its
        calls made (finish, the last render) was reported with the call."""
        if "stopped_because" not in self.changes:
            self.changes["stopped_because"] = why
            self.report.append(f"agent: stopped: {why}")
        return self._end_driving(self.changes["stopped_because"])

    def _hand_over(self, strikes: int) -> dict:
        notice = (f"the agent gave up after {strikes} unusable replies in a row (no tool call, unknown tools or "
                  "bad arguments); the fixed loop goes on from here")
        self._record(FALLBACK_STEP, {}, outcome={"notice": notice})
        self.report.append(f"agent: {notice}")
        return self._end_driving(notice)

    def _end_driving(self, why: str) -> dict:
        """Leave the run to the graph: a prompt changed but not rendered becomes the next iteration,
        which the generate node renders (the routers send it there)."""
        view = self.view
        self.changes["agent_ended"] = why
        if view["prompt"] != view.get("rendered_prompt"):
            self.changes["iteration"] = view["iteration"] + 1
        return self._update()

    def _update(self) -> dict:
        return self.changes | {"agent_messages": remembered(self.conversation), "agent_report": self.report}

    def _run(self, prepared: PreparedCall) -> bool:
        """Run one call, answer it and record it; whether it ran (a refusal is answered too)."""
        call, started = prepared.call, time.perf_counter()
        arguments = prepared.arguments.model_dump()
        try:
            outcome = execute(self.ctx, self.view, prepared)
        except ToolRefused as error:
            self.conversation.append(tool_message(call, {"error": str(error)}))
            self._record(call.name, arguments, error=str(error), seconds=time.perf_counter() - started)
            self.report.append(f"agent: {call.name}: {error}")
            return False
        self.changes |= outcome.update
        self.conversation.append(tool_message(call, outcome.result))
        self._record(call.name, arguments, outcome=outcome.result, seconds=time.perf_counter() - started,
                     proposed=outcome.proposed, kept=outcome.kept)
        self.report.append(f"agent: {outcome.summary}")
        return True

    def _answer_refused(self, call, error: ToolArgumentsError | ToolRefused) -> None:
        """Answer a call that could not be prepared with its error, and record it (an unknown tool under
        UNKNOWN_TOOL_STEP, with the name it was given)."""
        self.conversation.append(tool_message(call, {"error": str(error)}))
        step = UNKNOWN_TOOL_STEP if isinstance(error, UnknownTool) else call.name
        self._record(step, _raw_arguments(call, error), error=str(error))
        self.report.append(f"agent: {call.name}: {error}")

    def _answer_words(self, reply: AgentTurn, offered: list[AgentTool]) -> None:
        self.conversation.append(no_tool_call_message([tool.name for tool in offered]))
        self._record(NO_TOOL_CALL_STEP, {}, error="answered in words without a tool call",
                     outcome={"text": reply.text[:_KEPT_CHARS]})
        self.report.append("agent: answered in words without a tool call (told to call one)")

    def _record(self, tool: str, arguments: dict, *, error: str | None = None, outcome: dict | None = None,
                seconds: float = 0.0, proposed: list[str] | None = None, kept: list[str] | None = None) -> None:
        self.ctx.history.record_tool_call(self.state["run_id"], ToolCallRecord(
            tool=tool, caller="agent", iteration_index=self.view["iteration"], arguments=arguments,
            seconds=seconds, proposed=proposed or [], kept=kept or [], outcome=outcome, error=error,
        ))

    def _budget_spent(self) -> str | None:
        seconds = self.state.get("seconds_spent", 0.0) + time.perf_counter() - self._started
        return self.ctx.budget_spent(self.state["run_id"], seconds)

    def _opening(self) -> dict:
        state, t2i = self.state, self.ctx.models.text_to_image
        return opening_message(
            prompt=state["prompt"], clip_i=state["clip_i"], clip_t=state["clip_t"],
            tokens=t2i.count_tokens(state["prompt"]), budget=t2i.token_budget(),
            generations_left=generations_left(state), refine_tools=refine_tools_offered(self.ctx),
        )


def _raw_arguments(call, error: Exception) -> dict:
    """What the history keeps of a call that could not be prepared: the name it gave (for an unknown
    tool) and its arguments as written."""
    kept = {"arguments": call.arguments[:_KEPT_CHARS]}
    return {"name": call.name, **kept} if isinstance(error, UnknownTool) else kept
