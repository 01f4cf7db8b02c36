"""The phrase vocabulary: how a prompt is made of phrases, how a proposed phrase is cleaned before it
can join one, when two phrases are the same (`phrase_key`) or near-duplicates (`phrase_family_key`),
and where a phrase stands in a text as whole words. Every part of arpo asks these questions here.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from pydantic import BaseModel

_SEPARATOR = ", "


class DroppedPhrase(BaseModel):
    """A phrase a proposer offered that never became a candidate, and why (phrase hygiene's reasons)."""

    phrase: str
    reason: str


def join_prompt(prompt: str, phrases: list[str]) -> str:
    """P + ΔP: the phrases appended to the prompt, comma separated, as prompts for SD are written."""
    parts = [prompt.strip().strip(",").strip()] + [phrase.strip() for phrase in phrases]
    return _SEPARATOR.join(part for part in parts if part)


def prompt_phrases(prompt: str) -> list[str]:
    """The comma-separated phrases a prompt is made of (the first is usually a caption)."""
    return [part.strip() for part in prompt.split(",") if part.strip()]


LIST_MARKER = re.compile(
    r"^\s*(?:[-*+•‣▪◦●·]|\(?\d{1,3}[.):\]]|\(?[A-Za-z][.)])\s+(.*\S)\s*$"  # bullet, 1. 2) (3) a)
)
"""A list item's marker at the start of a line; group 1 is the item."""
_QUOTES = "\"'`“”‘’«»"
_EDGE_PUNCTUATION = ".,;:!?[]{}*_"  # with markdown emphasis: "*soft light*", "_film grain_"


def clean_phrase(raw: str) -> str:
    """One phrase without list marker, markdown emphasis, surrounding quotes or edge punctuation, in
    single spaces. Commas inside stay: a reply's "soft, fluffy coat" is still two phrases to split."""
    phrase = " ".join(str(raw).split())
    marker = LIST_MARKER.match(phrase)
    if marker:
        phrase = marker.group(1)
    phrase = phrase.replace("**", "").replace("__", "")
    previous = None
    while phrase != previous:
        previous = phrase
        phrase = phrase.strip().strip(_QUOTES).strip(_EDGE_PUNCTUATION).strip()
    return phrase


# The keys below are pure functions of a string that hygiene, selection and the offline proposer ask
# for again and again (the prompt's phrases, every round); remembering the recent ones is cheaper.
@lru_cache(maxsize=8192)
def phrase_key(phrase: str) -> str:
    """Comparison key under which two phrases count as the same suggestion: case folded, punctuation
    gone. Letters of every script count ("Pénot", "кошка", "水墨画"), so a phrase in another language
    or an accented name is not reduced to nothing or to fragments."""
    return re.sub(r"[\W_]+", " ", unicodedata.normalize("NFC", phrase).casefold()).strip()


def phrase_words(phrase: str) -> list[str]:
    """The words of a phrase under `phrase_key` (lower case, punctuation gone)."""
    return phrase_key(phrase).split()


def prompt_phrase(raw: str) -> str:
    """A candidate as it may join a prompt: cleaned, and with no comma inside (it would split the
    phrase in two where the prompt is read)."""
    return clean_phrase(str(raw).replace(",", " "))


def contains_words(text: str, phrase: str) -> bool:
    """Whether `phrase` occurs in `text` as whole words (so "art" is not found in "party")."""
    return _whole_words(phrase).search(text) is not None


def has_phrase(text: str, phrase: str) -> bool:
    """Whether `phrase` is in `text` as the same phrase, as whole words: both compared under `phrase_key`,
    so case and punctuation do not matter ("Soft Light." is in "a cat, soft light")."""
    key = phrase_key(phrase)
    return bool(key) and contains_words(phrase_key(text), key)


def replace_words(text: str, old: str, new: str) -> str:
    """Replace a word or phrase everywhere as whole words, in any case, keeping a leading capital
    ("Dog" becomes "Cat")."""
    if not old.strip():
        return text

    def keep_case(match: re.Match[str]) -> str:
        return new[:1].upper() + new[1:] if match.group(0)[:1].isupper() and new else new

    return _whole_words(old.strip(), re.IGNORECASE).sub(keep_case, text)


def _whole_words(phrase: str, flags: int = 0) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w){re.escape(phrase)}(?!\w)", flags)


@lru_cache(maxsize=8192)
def phrase_family_key(phrase: str) -> str:
    """A looser key under which near-duplicates meet: `phrase_key` with plurals folded to singular, a
    few derivational endings and British spellings folded, and word order ignored, so "Color palette
    variations" and "variation color palette" share one key, and so do "Surrealistic artist" and
    "Surrealist artist"."""
    return " ".join(sorted(_folded(_without_accents(word)) for word in phrase_words(phrase)))


def _without_accents(word: str) -> str:
    """"pénot" -> "penot": a model may drop or add the accents of a name it copies."""
    return "".join(char for char in unicodedata.normalize("NFD", word) if unicodedata.category(char) != "Mn")


def _folded(word: str) -> str:
    """One word under the family key: its rough singular with its spelling variants folded."""
    return _variant_folded(_singular(word))


def _variant_folded(word: str) -> str:
    """Fold the endings that make two spellings of one idea, not two ideas.

    Deliberately few: "surrealistic"/"surrealist" and "geometrical"/"geometric" say the same thing in a
    prompt, and so do "colour"/"color"; "painting"/"painter" or "textured"/"texture" do not, so -ing,
    -er and -ed are left alone. Short words are never touched ("four" is not "for").
    """
    if len(word) >= 8 and word.endswith("istic"):
        return word[:-2]  # surrealistic -> surrealist, futuristic -> futurist
    if len(word) >= 7 and word.endswith("ical"):
        return word[:-2]  # geometrical -> geometric, whimsical -> whimsic (both spellings alike)
    if len(word) >= 6 and word.endswith("our"):
        return word[:-2] + "r"  # colour -> color, harbour -> harbor
    return word


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
