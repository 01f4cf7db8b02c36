"""Phrase hygiene: which phrases a language model offered may become candidates, and why the rest may not.

Small models answer a request for phrases with single words, whole clauses, placeholders copied from
the template ("(none were listed)", "phrase 1"), the template's own words ("image1 photo2"), the
current prompt, the same word twice ("contrast contrast") or the same phrase in two spellings ("color
palette variation" / "color palette variations"). Greedy selection would score all of them, and a
placeholder that happens to raise CLIP similarity by chance would end up in the prompt. Each check
here names its reason, so the history can show what was dropped and why.

Identity of phrases is `phrase_key` (graphs/prompt_text.py) throughout; near-duplicates meet under
`phrase_family_key`, which also folds plurals and word order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from arpo.agents.proposal import DroppedPhrase, ProposalRequest
from arpo.agents.reply_parsing import clean_phrase
from arpo.graphs.prompt_text import phrase_family_key, phrase_key, phrase_words, prompt_phrases

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
        context_words = set(
            phrase_words(" ".join([request.current_prompt, request.differences, *request.feedback]))
        )
        # Words only the instructions use: a phrase made of them repeats the template, not the picture.
        self.instruction_words = set(phrase_words(instructions)) - context_words - _FUNCTION_WORDS
        self.prompt_key = phrase_key(request.current_prompt)
        self.prompt_families = {phrase_family_key(p) for p in prompt_phrases(request.current_prompt)}
        self.tried = {phrase_family_key(p) for p in request.tried}
        self.banned = {phrase_family_key(p) for p in request.banned}

    def screen(self, raw_phrases: list[str]) -> ScreenedPhrases:
        """Kept phrases in the order offered (at most `max_candidates`), and every dropped one.

        A phrase holding commas is split into its parts, each judged on its own.
        """
        result = ScreenedPhrases()
        seen: dict[str, str] = {}
        for raw in raw_phrases:
            for part in str(raw).split(","):
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
        if self._echoes_instructions(key, words):
            return ECHOES_INSTRUCTIONS
        if family in self.banned:
            return BANNED
        if family in self.prompt_families or _contains_words(self.prompt_key, key):
            return ECHOES_PROMPT
        if _has_repeated_word(words):
            return REPEATED_WORDS
        count = len(phrase.split())
        if count < self.request.min_words:
            return TOO_SHORT
        if count > self.request.max_words:
            return TOO_LONG
        if family in self.tried:
            return TRIED
        return None

    def _echoes_instructions(self, key: str, words: list[str]) -> bool:
        if _NUMBERED_PICTURE.search(key):
            return True
        meaningful = [word for word in words if word not in _FUNCTION_WORDS]
        echoed = [word for word in meaningful if word in self.instruction_words]
        # Most of its words come from the instructions and none of them from the picture's context.
        return bool(meaningful) and len(echoed) * 4 >= len(meaningful) * 3

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


def _has_repeated_word(words: list[str]) -> bool:
    meaningful = [word for word in words if word not in _FUNCTION_WORDS]
    return len(set(meaningful)) < len(meaningful)


def _contains_words(text: str, phrase: str) -> bool:
    """Whether `phrase` occurs in `text` as whole words (so 'art' is not found in 'party')."""
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text) is not None
