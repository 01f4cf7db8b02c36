"""The agent role: the LLM brain asked, turn by turn, which of the loop's tools to call next.

In agent mode (`--agent`) the fixed order of the loop (generate, compare, propose, select) becomes
the model's choice. Each turn sends the conversation so far with the tools offered as OpenAI
function tools, and reads back the calls the model made. What the tools do, and what their results
say, is the graph's business (graphs/agent_tools.py); this module only speaks to the brain: the
system prompt, the opening message, how calls and their answers are written into the conversation,
and how a call's arguments are read.

The conversation is kept as plain JSON messages (dicts of strings and lists), so the graph can keep it
in its checkpointed state and a resumed run asks the model exactly what it would have asked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from arpo.agents.brain import Brain, FunctionCall

AGENT_SYSTEM_PROMPT = """\
You steer a search for the text prompt behind a reference image: the prompt with which a \
text-to-image model draws that picture. You never see the images yourself. Your tools render the \
current prompt and measure the render against the reference with two scores:
- CLIP-I, how close the rendered image is to the reference; it decides which prompt wins;
- CLIP-T, how close the prompt's text is to the reference image.

A productive round: generate_and_compare (render the prompt, score it, and hear how the render \
differs from the reference), propose_phrases (candidate phrases that address those differences), \
select (keeps only the phrases that raise CLIP-T), then generate_and_compare again to learn whether \
the image itself improved. When rounds stop helping, refine polishes the best prompt with an \
optimiser, and edit_prompt lets you rewrite the prompt yourself (it must fit the model's token \
budget). Call finish once further rounds are not worth their cost.

Whatever you do last, the prompt whose render scored the highest CLIP-I is the result, so trying \
an idea is safe. Every reply must call at least one tool; a reply in plain words does nothing."""

NO_TOOL_CALL = (
    "Your reply called no tool, so nothing happened. Reply with a tool call ({tools}); call finish to end the run."
)

MEMORY_TURNS = 10
"""Turns of the conversation (a reply and the answers to its calls) sent back to the model besides
the opening message: enough to remember the last few rounds, bounded so the request does not grow
with the run."""


class ToolArgumentsError(ValueError):
    """A call's arguments are not a JSON object; the message says why, for the model to read."""


@dataclass
class AgentTurn:
    """What the model answered in one turn."""

    text: str
    """Its words (often empty when it called tools)."""
    calls: list[FunctionCall]
    message: dict
    """The reply as the conversation keeps it (an assistant message, with its tool calls)."""
    call_id: str
    """The brain call that answered, to flag it when nothing in it could be used."""


class AgentRole:
    """Asks the brain for the next tool calls; keeps no state beyond its brain."""

    role = "agent"

    def __init__(self, brain: Brain) -> None:
        self.brain = brain

    def next_turn(self, conversation: list[dict], tools: list[dict]) -> AgentTurn:
        """One request: the system prompt, then `conversation`, with `tools` offered (tool choice auto,
        so a model that cannot call tools answers in words, which the caller turns into an error)."""
        messages = [{"role": "system", "content": AGENT_SYSTEM_PROMPT}, *conversation]
        reply = self.brain.complete(messages, role=self.role, tools=tools, tool_choice="auto")
        return AgentTurn(text=reply.text, calls=list(reply.tool_calls),
                         message=assistant_message(reply.text, reply.tool_calls), call_id=reply.call_id)

    def flag_unusable(self, turn: AgentTurn, reason: str) -> None:
        """Mark the turn's brain call as answered but of no use (no call in it could run)."""
        self.brain.flag_reply(turn.call_id, reason)


def opening_message(*, prompt: str, clip_i: float, clip_t: float, tokens: int, budget: int,
                    generations_left: int, refine_tools: list[str]) -> dict:
    """The first user message: where the search stands before the agent's first call."""
    refine = (f"refine can use {', '.join(refine_tools)}." if refine_tools
              else "No refinement tool suits this run.")
    text = (
        f'The current prompt (iteration 0, already rendered) is: "{prompt}"\n'
        f"Its render scores CLIP-I {clip_i:.4f} and CLIP-T {clip_t:.4f}. It has {tokens} of the "
        f"model's {budget} tokens. You may render {generations_left} more prompt(s). {refine}\n"
        "Begin with generate_and_compare to hear how the render differs from the reference."
    )
    return {"role": "user", "content": text}


def assistant_message(text: str, calls: list[FunctionCall]) -> dict:
    """A reply as the next request must repeat it: its words and its calls, in the wire shape."""
    message: dict = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            for call in calls
        ]
    return message


def tool_message(call: FunctionCall, result: dict) -> dict:
    """The answer to one call, as JSON text the model reads."""
    return {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result, ensure_ascii=False)}


def no_tool_call_message(tool_names: list[str]) -> dict:
    """What a reply in words gets back: a reminder that only tool calls do anything."""
    return {"role": "user", "content": NO_TOOL_CALL.format(tools=", ".join(tool_names))}


def call_arguments(call: FunctionCall) -> dict:
    """A call's arguments as a dict; ToolArgumentsError when they are not a JSON object.

    Empty arguments are no arguments, and a JSON object sent as a JSON string (written twice over,
    as some small models do) is read once more.
    """
    text = call.arguments.strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ToolArgumentsError(
            f"the arguments of {call.name} are not valid JSON ({error.msg} at character {error.pos}); "
            "send one JSON object"
        ) from None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if not isinstance(value, dict):
        raise ToolArgumentsError(
            f"the arguments of {call.name} must be one JSON object, not {type(value).__name__}"
        )
    return value


def remembered(conversation: list[dict], turns: int = MEMORY_TURNS) -> list[dict]:
    """The opening message and the last `turns` turns of the conversation.

    A turn starts at a reply and runs until the next one, so a reply's calls are never cut off from
    their answers (a request with an answer to a call it does not contain is refused).
    """
    if not conversation:
        return []
    starts = [index for index, message in enumerate(conversation) if message.get("role") == "assistant"]
    if len(starts) <= turns:
        return list(conversation)
    return [conversation[0], *conversation[starts[-turns]:]]
