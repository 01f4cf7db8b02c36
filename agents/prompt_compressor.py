"""The prompt-compressor role: a language model asked to say the same prompt in fewer tokens.

When the loop's prompt fills the text encoder's window, every further phrase is refused as over
budget. The compressor merges phrases that overlap and shortens wordy ones, so the window has room
again; the loop keeps the rewrite only if CLIP scores it no worse than the original (graphs/compression.py).
"""

from __future__ import annotations

from arpo.agents.brain import Brain
from arpo.agents.prompt_writer import clean_prompt_reply

COMPRESSION_TEMPLATE = """\
This text-to-image prompt is too long: the model reads only {budget} tokens and it has {tokens}.

Prompt: {prompt}

Rewrite it shorter, to about {target} tokens, so that it still describes the same picture: merge \
phrases that say the same thing, shorten wordy phrases, drop filler words; keep every distinct \
visual detail (subject, setting, medium, style, lighting, colour, composition) and keep these \
phrases word for word: {kept}. Keep the comma-separated form, most important first. Answer with the \
new prompt alone: no label, no quotes, no explanation."""


class PromptCompressor:
    """Asks the LLM for a shorter rewrite of a prompt in one call; keeps no state beyond its brain."""

    role = "compressor"

    def __init__(self, brain: Brain) -> None:
        self.brain = brain

    def compress(self, prompt: str, *, tokens: int, budget: int, target: int, keep: list[str]) -> str | None:
        """A shorter prompt, or None when the reply held none (the reply is flagged as unusable)."""
        message = COMPRESSION_TEMPLATE.format(
            prompt=prompt, tokens=tokens, budget=budget, target=target, kept=", ".join(keep) if keep else "(none)"
        )
        reply = self.brain.complete([{"role": "user", "content": message}], role=self.role)
        rewrite = clean_prompt_reply(reply.text)
        if not rewrite:
            self.brain.flag_reply(reply.call_id, "empty rewrite; the prompt was compressed without the LLM")
            return None
        return rewrite
