"""A recovered prompt as two editable parts, content and style, and the edits people make to it.

The thesis (§4.2.3) shows the use of a recovered prompt beyond recreating the reference: change
what is shown and keep how it looks, or the other way round. `split_prompt` sorts the prompt's
comma-separated phrases without a language model: a phrase is style when clip-interrogator's banks
list it as a medium, art movement or artist, or when it names a look (lighting, rendering, a painting
technique, a photographic term). The LLM splitter (`arpo.agents.prompt_splitter`) does better when a
brain is configured.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import BaseModel

from arpo.core.phrases import join_prompt, phrase_key, prompt_phrases
from arpo.tools.phrase_bank import load_phrase_bank

STYLE_BANKS = ("mediums", "movements", "artists")

# Words that mark a phrase as describing the look rather than the subject.
_STYLE_WORDS = (
    "style", "art", "artwork", "painting", "painted", "illustration", "drawing", "sketch", "render",
    "rendered", "photo", "photograph", "photography", "lighting", "light", "lit", "watercolor",
    "watercolour", "oil", "acrylic", "ink", "pastel", "digital", "3d", "octane", "unreal", "cinematic",
    "bokeh", "hdr", "4k", "8k", "detailed", "resolution", "lens", "mm", "shot", "portrait", "anime",
    "cartoon", "realistic", "photorealistic", "surreal", "vintage", "retro", "minimalist", "palette",
    "tones", "toned", "colors", "colours", "colorful", "monochrome", "sepia", "vibrant", "moody",
    "atmospheric", "composition", "depth", "focus", "texture", "trending", "artstation", "by",
)


class PromptParts(BaseModel):
    """A prompt split into what it shows (content) and how it looks (style), both comma-separated."""

    content: str
    style: str

    def compose(self) -> str:
        """The prompt again: content first, as prompts are usually written."""
        return join_prompt(self.content, prompt_phrases(self.style))


def split_prompt(prompt: str) -> PromptParts:
    """Sort a prompt's phrases into content and style, keeping their order within each part."""
    content, style = [], []
    for phrase in prompt_phrases(prompt):
        (style if is_style_phrase(phrase) else content).append(phrase)
    if not content and style:
        content, style = style[:1], style[1:]  # a prompt always shows something
    return PromptParts(content=", ".join(content), style=", ".join(style))


def is_style_phrase(phrase: str) -> bool:
    """Whether a phrase describes the look (medium, movement, artist, technique) of an image."""
    key = phrase_key(phrase)
    if key in _style_bank_keys():
        return True
    return any(word in _STYLE_WORDS for word in key.split())


@lru_cache(maxsize=1)
def _style_bank_keys() -> frozenset[str]:
    banks = load_phrase_bank(STYLE_BANKS)
    return frozenset(phrase_key(phrase) for phrases in banks.values() for phrase in phrases)
