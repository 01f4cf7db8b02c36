"""How a prompt is built from phrases, and how a proposed phrase is cleaned before it can join one."""

from __future__ import annotations

import re

_SEPARATOR = ", "


def join_prompt(prompt: str, phrases: list[str]) -> str:
    """P + ΔP: the phrases appended to the prompt, comma separated, as prompts for SD are written."""
    parts = [prompt.strip().strip(",").strip()] + [phrase.strip() for phrase in phrases]
    return _SEPARATOR.join(part for part in parts if part)


def prompt_phrases(prompt: str) -> list[str]:
    """The comma-separated phrases a prompt is made of (the first is usually a caption)."""
    return [part.strip() for part in prompt.split(",") if part.strip()]


def clean_phrase(phrase: str) -> str:
    """Collapse whitespace and drop the punctuation that would break the comma-separated prompt."""
    phrase = re.sub(r"\s+", " ", phrase.replace(",", " ")).strip()
    return phrase.strip(" .;:\"'`")


def phrase_key(phrase: str) -> str:
    """Comparison key under which two phrases count as the same suggestion."""
    return re.sub(r"[^a-z0-9]+", " ", phrase.lower()).strip()
