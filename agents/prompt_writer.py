"""The prompt-writer role: a vision-language model asked to write a text-to-image prompt for an image.

This is the "VLM caption" baseline of the evaluation (thesis Table 4.2's BLIP-2 / GPT-4V rows): one
call, no loop. The template asks for a prompt rather than a description, because descriptions run
long and text encoders read only 75 tokens.
"""

from __future__ import annotations

import re

from PIL import Image

from arpo.agents.brain import Brain, BrainReply
from arpo.agents.image_parts import image_part, user_message
from arpo.core.errors import BrainError

PROMPT_WRITER_TEMPLATE = """\
Write the prompt that a text-to-image model such as Stable Diffusion would need to recreate this \
picture as closely as possible. Name the main subject and what it is doing, the setting, then the \
medium, style, lighting, colours and composition, as short comma-separated phrases, most important \
first, in at most {max_words} words. Answer with the prompt alone: no quotes, no label, no \
explanation."""

DEFAULT_MAX_WORDS = 60

_LABEL = re.compile(r"^\s*\**\s*(?:text-to-image\s+)?prompt\s*\**\s*:\s*\**\s*", re.IGNORECASE)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_QUOTES = "\"'“”‘’`"


class PromptWriter:
    """Asks the VLM for a prompt in one call; keeps no state beyond its brain."""

    role = "prompt_writer"

    def __init__(self, brain: Brain, max_words: int = DEFAULT_MAX_WORDS) -> None:
        self.brain = brain
        self.max_words = max_words

    def write(self, image: Image.Image) -> str:
        """A prompt for `image`; raises BrainError when the model's reply holds no usable text."""
        message = user_message(PROMPT_WRITER_TEMPLATE.format(max_words=self.max_words), image_part(image))
        reply: BrainReply = self.brain.complete([message], role=self.role)
        prompt = clean_prompt_reply(reply.text)
        if not prompt:
            self.brain.flag_reply(reply.call_id, "empty prompt")
            raise BrainError(f"{self.role} brain {self.brain.model} answered with no prompt")
        return prompt


def clean_prompt_reply(text: str) -> str:
    """The prompt inside a reply: code fences, a leading "Prompt:" label and wrapping quotes removed,
    whitespace collapsed to single spaces."""
    cleaned = _FENCE.sub("", text.strip())
    cleaned = _LABEL.sub("", cleaned)
    cleaned = " ".join(cleaned.split())
    while len(cleaned) >= 2 and cleaned[0] in _QUOTES and cleaned[-1] in _QUOTES:
        cleaned = cleaned[1:-1].strip()
    return cleaned
