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


def phrase_words(phrase: str) -> list[str]:
    """The words of a phrase under `phrase_key` (lower case, punctuation gone)."""
    return phrase_key(phrase).split()


def phrase_family_key(phrase: str) -> str:
    """A looser key under which near-duplicates meet: `phrase_key` with plurals folded to singular and
    word order ignored, so "Color palette variations" and "variation color palette" share one key."""
    return " ".join(sorted(_singular(word) for word in phrase_words(phrase)))


def _singular(word: str) -> str:
    """A rough English singular, good enough to fold "variations" and "variation" together.

    It may mangle a word ("glass" is safe, "lens" becomes "len"), but both spellings of a pair are
    folded the same way, which is all a comparison key needs.
    """
    if len(word) <= 3 or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "zes", "sses")):
        return word[:-2]
    if word.endswith("s"):
        return word[:-1]
    return word
