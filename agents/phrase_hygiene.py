"""Phrase hygiene: which phrases a language model offered may become candidates, and why the rest may not.

Small models answer a request for phrases with single words, whole clauses, placeholders copied from
the template ("(none were listed)", "phrase 1"), the template's own words ("image1 photo2"), the
current prompt, the same word twice ("contrast contrast"), the same phrase in two spellings ("color
palette variation" / "color palette variations", "Surrealistic artist" / "Surrealist artist"), URL
pieces and glued tokens ("//raw.githubusercontent. altınauser"), and pieces of their own sentences
("The cat in your picture is"). Greedy selection would score all of them, and a
placeholder that happens to raise CLIP similarity by chance would end up in the prompt. Each check
here names its reason, so the history can show what was dropped and why.

Identity of phrases is `phrase_key` (arpo/core/phrases.py) throughout; near-duplicates meet under
`phrase_family_key`, which also folds plurals, a few spelling variants and word order.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from arpo.agents.proposal import ProposalRequest
from arpo.core.phrases import DroppedPhrase, clean_phrase, contains_words, phrase_family_key, phrase_key, phrase_words, prompt_phrases

# The reasons a phrase is dropped, as recorded in the history.
PLACEHOLDER = "placeholder"
ECHOES_INSTRUCTIONS = "echoes the instructions"
ECHOES_PROMPT = "already in the prompt"
REPEATED_WORDS = "repeated words"
TOO_SHORT = "too short"
TOO_LONG = "too long"
NEAR_DUPLICATE = "near-duplicate"
TRIED = "tried with this prompt"
BANNED = "banned"
NOT_WORDS = "not words"
FRAGMENT = "sentence fragment"

# Words that carry no meaning of their own: they may repeat ("black and white and red") and they do not
# make a phrase an echo of the instructions.
_FUNCTION_WORDS = frozenset(
    "a an the and or of in on at to with for from by as is are be it its this that these those into "
    "onto over under no not only each every any more less very".split()
)
# A picture referred to by the template's names for it: "Image 1", "image2", "photo 2", "img1".
_NUMBERED_PICTURE = re.compile(r"\b(?:image|img|photo|picture|pic|phrase|candidate)\s*_?\d+\b")
_PLACEHOLDER_KEYS = frozenset(
    {"none", "n a", "na", "null", "nothing", "tbd", "etc", "no differences", "none were listed",
     "empty", "phrase", "phrases", "candidate", "candidates", "example", "item", "your phrase",
     "first phrase", "second phrase", "another phrase", "new phrase", "short phrase"}
)
_PLACEHOLDER_KEY = re.compile(r"^(?:(?:first|second|third|new|another|your|some|example|short)\s+)?"
                              r"(?:phrase|candidate|item|example|option)(?:\s+\d+)?$")
_ENCLOSED = re.compile(r"^\s*(?:\(.*\)|<.*>|\[.*\]|\{.*\})\s*$")
# Where a model listed several phrases inside one item ("bedroom; close-up photograph", "a | b").
_LIST_SEPARATORS = re.compile(r"[,;|\n\r\t•·]")
# Pieces of addresses and file names: "//host", "www.", "http", a leading slash ("/INST"), and a dotted
# name whose parts are glued words ("raw.githubusercontent", "photo.jpg"). Initials ("J.M.W. Turner")
# and numbers ("f/1.8", "3.5mm") do not match.
_ADDRESS = re.compile(r"//|^/|\bwww\.|\bhttps?\b|[^\W\d_][\w-]+\.[^\W\d_]{2,}")
# Punctuation a real prompt phrase may hold ("van gogh's", "sci-fi", "f/1.8", "black & white", "(1920s)",
# 'Mike "Beeple" Winkelmann'); anything else (underscores, braces, markup, emoji) comes from code,
# templates or glitches.
_PHRASE_PUNCTUATION = frozenset("'’‘\"“”-–/&.()+!:°%")
# Words a finished phrase does not end with: the sentence it was cut from goes on ("The cat in your
# picture is"). Particles that end phrasal descriptions ("zoomed in", "lights on", "close up") are absent,
# and so are words that are nouns as often ("trash can", "free will", "light being", "doctor who").
_DANGLING_ENDINGS = frozenset(
    "a an the and or but nor of with to for from by as at than into onto upon via "
    "is are was were be been am has have had do does did would could should shall must "
    "this that these those which whose what where when while if because my your our their its very".split()
)
# "your" before one of these is the model speaking to the reader about the task ("the cat in your
# picture"); "your name" or "your pov" are things a prompt may say.
_TASK_NOUNS = frozenset(
    "picture pictures image images photo photos reference prompt prompts description request question "
    "phrase phrases list answer example instructions".split()
)
# Alphabets a glitching tokenizer glues together ("тельнуюmodel", "сinematic" with a Cyrillic "с"). Other
# scripts mix within one word as a matter of course (Japanese kanji with kana, Chinese with "3D" or "CG").
_ALPHABETS = frozenset({"LATIN", "CYRILLIC", "GREEK", "ARMENIAN", "GEORGIAN", "HEBREW", "ARABIC"})
_TOKEN_EDGES = "\"'“”‘’.!:;()"


@dataclass
class ScreenedPhrases:
    """The phrases that may become candidates, and the ones dropped with their reasons."""

    kept: list[str] = field(default_factory=list)
    dropped: list[DroppedPhrase] = field(default_factory=list)

    def problem(self) -> str:
        """What was wrong, in one line, for a repair request (when nothing was kept)."""
        if not self.dropped:
            return "it listed no phrases"
        shown = "; ".join(f'"{d.phrase}" ({d.reason})' for d in self.dropped[:6])
        more = f"; and {len(self.dropped) - 6} more" if len(self.dropped) > 6 else ""
        return shown + more


class PhraseScreen:
    """Screens one round's phrases against the request they answer and the instructions shown."""

    def __init__(self, request: ProposalRequest, instructions: str) -> None:
        self.request = request
        # "Image 1" in the differences is the template's name for the reference, written back by the
        # comparer; it does not make "image" a word of the picture's context.
        self.context_key = _NUMBERED_PICTURE.sub(
            " ", phrase_key(" ".join([request.current_prompt, request.differences, *request.feedback]))
        )
        context_words = set(self.context_key.split())
        # Words only the instructions use: a phrase made of them repeats the template, not the picture.
        self.instruction_words = set(phrase_words(instructions)) - context_words - _FUNCTION_WORDS
        self.instructions_key = phrase_key(instructions)
        self.prompt_key = phrase_key(request.current_prompt)
        self.prompt_families = {phrase_family_key(p) for p in prompt_phrases(request.current_prompt)}
        self.tried = {phrase_family_key(p) for p in request.tried}
        self.banned = {phrase_family_key(p) for p in request.banned}

    def screen(self, raw_phrases: list[str]) -> ScreenedPhrases:
        """Kept phrases in the order offered (at most `max_candidates`), and every dropped one.

        A phrase holding list separators (commas, semicolons, pipes, bullets, line breaks) is split
        into its parts, each judged on its own.
        """
        result = ScreenedPhrases()
        seen: dict[str, str] = {}
        for raw in raw_phrases:
            for part in _LIST_SEPARATORS.split(str(raw)):
                phrase = clean_phrase(part)
                if not phrase_key(phrase):
                    continue
                reason = self.reason_to_drop(phrase) or self._repeat_reason(phrase, seen)
                if reason:
                    result.dropped.append(DroppedPhrase(phrase=phrase, reason=reason))
                    continue
                seen[phrase_family_key(phrase)] = phrase
                result.kept.append(phrase)
        return _capped(result, self.request.max_candidates)

    def reason_to_drop(self, phrase: str) -> str | None:
        """Why one phrase may not be a candidate on its own merits, or None when it may."""
        key = phrase_key(phrase)
        words = key.split()
        family = phrase_family_key(phrase)
        if _is_placeholder(phrase, key):
            return PLACEHOLDER
        if _is_not_words(phrase):
            return NOT_WORDS
        if self._echoes_instructions(key, words):
            return ECHOES_INSTRUCTIONS
        if family in self.banned:
            return BANNED
        if family in self.prompt_families or contains_words(self.prompt_key, key):
            return ECHOES_PROMPT
        if _has_repeated_word(words):
            return REPEATED_WORDS
        count = len(phrase.split())
        if count < self.request.min_words:
            return TOO_SHORT
        if count > self.request.max_words:
            return TOO_LONG
        if _is_fragment(phrase):
            return FRAGMENT
        if family in self.tried:
            return TRIED
        return None

    def _echoes_instructions(self, key: str, words: list[str]) -> bool:
        if _NUMBERED_PICTURE.search(key):
            return True
        if self._copies_instruction_run(key, words):
            return True
        meaningful = [word for word in words if word not in _FUNCTION_WORDS]
        echoed = [word for word in meaningful if word in self.instruction_words]
        # Most of its words come from the instructions and none of them from the picture's context.
        return bool(meaningful) and len(echoed) * 4 >= len(meaningful) * 3

    def _copies_instruction_run(self, key: str, words: list[str]) -> bool:
        """Whether the phrase is a run of the instructions' own words ("each describing what Image"),
        found there word for word and not in the picture's context."""
        if len(words) < 2 or all(word in _FUNCTION_WORDS for word in words):
            return False
        return contains_words(self.instructions_key, key) and not contains_words(self.context_key, key)

    @staticmethod
    def _repeat_reason(phrase: str, seen: dict[str, str]) -> str | None:
        return NEAR_DUPLICATE if phrase_family_key(phrase) in seen else None


def _capped(result: ScreenedPhrases, limit: int) -> ScreenedPhrases:
    # Phrases past the limit are not judged bad, only not asked for; they are simply not kept.
    return ScreenedPhrases(kept=result.kept[: max(limit, 0)], dropped=result.dropped)


def _is_placeholder(phrase: str, key: str) -> bool:
    return (
        bool(_ENCLOSED.match(phrase))
        or "..." in phrase
        or "…" in phrase
        or key in _PLACEHOLDER_KEYS
        or bool(_PLACEHOLDER_KEY.match(key))
    )


def _is_not_words(phrase: str) -> bool:
    """Whether the phrase holds something other than words: an address or file name, markup or
    code punctuation, or a token glued together from two alphabets ("тельнуюmodel")."""
    if _ADDRESS.search(phrase):
        return True
    if any(not _is_phrase_character(char) for char in phrase):
        return True
    return any(len(_scripts(token) & _ALPHABETS) > 1 for token in phrase.split())


def _is_phrase_character(char: str) -> bool:
    # Combining marks (category Mn) are part of letters written in decomposed form ("é" as e + ◌́).
    return (
        char.isalnum() or char.isspace() or char in _PHRASE_PUNCTUATION or unicodedata.category(char) == "Mn"
    )


def _scripts(token: str) -> set[str]:
    """The writing systems of a token's letters (LATIN, CYRILLIC, GREEK, CJK, ...)."""
    return {unicodedata.name(char, "UNKNOWN").split()[0] for char in token if char.isalpha()}


def _is_fragment(phrase: str) -> bool:
    """Whether the phrase is a piece of the model's own sentence rather than a description: it stops on
    a word that needs more after it ("The cat in your picture is"), or it talks to the reader about the
    task ("your picture", "you can see"). A final "you" stays ("looming over you" is a viewpoint), and so
    does a capitalised last word after another capitalised one (names: "Gu An", "Kun Can")."""
    originals = [token.strip(_TOKEN_EDGES) for token in phrase.split()]
    originals = [token for token in originals if token]
    tokens = [token.lower() for token in originals]
    if not tokens:
        return False
    is_name_end = len(originals) > 1 and originals[-1][:1].isupper() and originals[-2][:1].isupper()
    if tokens[-1] in _DANGLING_ENDINGS and not is_name_end:
        return True
    if "you" in tokens[:-1] or any(token in ("you're", "you’re", "yourself") for token in tokens):
        return True
    return any(word == "your" and next_word in _TASK_NOUNS for word, next_word in zip(tokens, tokens[1:]))


def _has_repeated_word(words: list[str]) -> bool:
    meaningful = [word for word in words if word not in _FUNCTION_WORDS]
    return len(set(meaningful)) < len(meaningful)
