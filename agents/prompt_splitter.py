"""The LLM role that splits a recovered prompt into content and style parts for editing.

Falls back to the phrase-bank split (`arpo.tools.prompt_parts.split_prompt`) when the reply cannot
be read or leaves phrases out, so a person always gets two parts to edit.
"""

from __future__ import annotations

from arpo.agents.brain import Brain
from arpo.agents.reply_parsing import MalformedReplyError, parse_json_object
from arpo.core.phrases import phrase_key, prompt_phrases
from arpo.tools.prompt_parts import PromptParts, split_prompt

PROMPT_PARTS_SCHEMA: dict = {
    "type": "object",
    "properties": {"content": {"type": "string"}, "style": {"type": "string"}},
    "required": ["content", "style"],
    "additionalProperties": False,
}

SPLIT_PROMPT_TEMPLATE = """\
Below is a prompt for a text-to-image model, a list of phrases separated by commas.

Sort its phrases into two groups:
- "content": what the picture shows (subjects, objects, their attributes and actions, the setting);
- "style": how it looks (medium, art movement, artist names, technique, lighting, colour palette, \
camera and quality terms).

Keep every phrase exactly as written, each in one group only, in the original order. Reply with one \
JSON object: {{"content": "phrases, comma separated", "style": "phrases, comma separated"}}.

Prompt: {prompt}"""


class PromptSplitter:
    """Splits a prompt into content and style with one LLM call."""

    role = "splitter"

    def __init__(self, brain: Brain) -> None:
        self.brain = brain

    def split(self, prompt: str) -> PromptParts:
        """The prompt's content and style parts; the offline split when the reply is unusable."""
        message = {"role": "user", "content": SPLIT_PROMPT_TEMPLATE.format(prompt=prompt)}
        reply = self.brain.complete(
            [message], role=self.role, json_schema=PROMPT_PARTS_SCHEMA, schema_name="prompt_parts"
        )
        try:
            parts = parse_json_object(reply.text, PromptParts)
        except MalformedReplyError:
            self.brain.flag_reply(reply.call_id, "malformed reply; split by phrase banks")
            return split_prompt(prompt)
        if not _keeps_every_phrase(prompt, parts):
            self.brain.flag_reply(reply.call_id, "reply changed the phrases; split by phrase banks")
            return split_prompt(prompt)
        return parts


def _keeps_every_phrase(prompt: str, parts: PromptParts) -> bool:
    """An edit must start from the person's prompt, not from the model's rewrite of it."""
    original = sorted(phrase_key(p) for p in prompt_phrases(prompt))
    returned = sorted(phrase_key(p) for p in prompt_phrases(parts.content) + prompt_phrases(parts.style))
    return original == returned
