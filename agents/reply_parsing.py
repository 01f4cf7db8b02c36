"""Tolerant reading of what language models answer when asked for a list of phrases or a JSON object.

Structured output is requested where the server supports it, but many models and servers ignore it and
answer with fenced JSON, a Python list, a numbered or bulleted list, or a list buried in prose. The
parser tries the most reliable readings first and falls back to looser ones, and says so with
`MalformedReplyError` only when no reading yields anything usable.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from arpo.core.phrases import LIST_MARKER, clean_phrase, phrase_key

ModelT = TypeVar("ModelT", bound=BaseModel)


class MalformedReplyError(ValueError):
    """A brain's reply held nothing the parser could use."""


_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)
_BOLD_LABEL = re.compile(r"^\*\*([^*]{1,40})\*\*\s*[:\-–—]\s*(.+)$")
# Openings that mark a line as the model talking rather than listing.
_CHATTER_OPENINGS = (
    "sure", "here", "sorry", "certainly", "of course", "i ", "i'", "as an", "note", "these ",
    "the following", "below", "hope", "let me", "okay", "ok,", "unfortunately",
)
_MAX_LOOSE_WORDS = 12
"""A fragment found by loose splitting that is longer than this is prose, not a phrase."""
_MAX_LIST_ITEM_WORDS = 6
"""A sentence-ending line whose comma-separated parts are longer than this is prose."""


def parse_phrase_list(text: str, *, distinct: bool = True) -> list[str]:
    """Candidate phrases from a reply in any common list shape, in order, without duplicates.

    Readings tried, most reliable first: JSON (an object with a list, or a bare list), JSON or a
    Python list inside code fences or embedded in prose, a bracketed unquoted list, numbered or
    bulleted lines, then semicolon- or comma-separated lines. Quotes, list markers and trailing
    punctuation are stripped; duplicates (same `phrase_key`) are dropped unless `distinct` is False,
    for a caller that counts the duplicates a model wrote (phrase hygiene).
    A reply that is well-formed JSON with an empty list (`{"phrases": []}` or `[]`) means "nothing
    to add" and gives an empty list. Raises MalformedReplyError when no reading yields a phrase.
    """
    if not text or not text.strip():
        raise MalformedReplyError("the reply was empty")
    if _is_explicitly_empty(text):
        return []
    for raw_items in _readings(text):
        phrases = _clean_phrases(raw_items, distinct)
        if phrases:
            return phrases
    raise MalformedReplyError(f"no phrases found in the reply: {_preview(text)}")


def _is_explicitly_empty(text: str) -> bool:
    """Whether the reply is (fenced) JSON that deliberately lists no phrases."""
    blocks = _FENCE.findall(text) or [text]
    for block in blocks:
        try:
            value = json.loads(block.strip())
        except ValueError:
            continue
        if value == [] or (isinstance(value, dict) and value.get("phrases") == []):
            return True
    return False


def parse_json_object(text: str, model: type[ModelT]) -> ModelT:
    """The first JSON object in `text` (bare, fenced or embedded in prose) that validates as `model`.

    Raises MalformedReplyError when there is none.
    """
    for value in _json_values(text):
        if isinstance(value, dict):
            try:
                return model.model_validate(value)
            except ValidationError:
                continue
    raise MalformedReplyError(f"no {model.__name__} object found in the reply: {_preview(text)}")


def _readings(text: str) -> Iterator[list[str]]:
    """Candidate item lists, from the most to the least trustworthy reading of the reply."""
    for block in _FENCE.findall(text):
        yield from _structured_readings(block)
    yield from _structured_readings(text)
    for block in _FENCE.findall(text):
        yield _marked_lines(block)
    without_fences = _FENCE.sub("\n", text)
    yield _marked_lines(without_fences)
    yield _separated_lines(without_fences)


def _structured_readings(text: str) -> Iterator[list[str]]:
    """Lists read from JSON or Python literals, whole or embedded, then from unquoted brackets."""
    for value in _literal_values(text):
        items = _strings_in(value)
        if items:
            yield items
    for inner in _bracketed_spans(text):
        yield inner.split(",")


def _json_values(text: str) -> Iterator[Any]:
    """JSON values in fenced blocks, the whole text, and embedded at each opening brace/bracket."""
    for block in _FENCE.findall(text):
        yield from _decoded_values(block)
    yield from _decoded_values(text)


def _decoded_values(text: str) -> Iterator[Any]:
    stripped = text.strip()
    try:
        yield json.loads(stripped)
        return
    except ValueError:
        pass
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\[{]", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        yield value


def _literal_values(text: str) -> Iterator[Any]:
    """JSON values, then Python literals (single-quoted lists) found in the text."""
    yield from _decoded_values(text)
    for span in _balanced_spans(text):
        try:
            yield ast.literal_eval(span)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue


def _strings_in(value: Any) -> list[str]:
    """The phrase strings a parsed value holds: a list, or the list inside an object."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        items: list[str] = []
        for element in value:
            if isinstance(element, str):
                items.append(element)
            elif isinstance(element, dict):
                first_text = next((v for v in element.values() if isinstance(v, str)), None)
                if first_text is not None:
                    items.append(first_text)
        return items
    if isinstance(value, dict):
        if "phrases" in value:
            return _strings_in(value["phrases"])
        for element in value.values():
            if isinstance(element, list):
                return _strings_in(element)
    return []


def _balanced_spans(text: str) -> Iterator[str]:
    """Substrings from each '[' to its matching ']' (quote-aware), outermost first."""
    for start, char in enumerate(text):
        if char != "[":
            continue
        end = _matching_bracket(text, start)
        if end is not None:
            yield text[start : end + 1]


def _matching_bracket(text: str, start: int) -> int | None:
    depth = 0
    quote: str | None = None
    index = start
    while index < len(text):
        char = text[index]
        if quote:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = None
        elif char in "\"'":
            # An apostrophe inside a word (artist's) is not a quote.
            previous = text[index - 1] if index > 0 else " "
            if char == '"' or not previous.isalnum():
                quote = char
        elif char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    return None


def _bracketed_spans(text: str) -> Iterator[str]:
    """Insides of [ ... ] spans whose items are not quoted (e.g. `[soft light, film grain]`)."""
    for match in re.finditer(r"\[([^\[\]]+)\]", text):
        inside = match.group(1)
        if any(char.isalpha() for char in inside):
            yield inside


def _marked_lines(text: str) -> list[str]:
    """Items of numbered or bulleted lines; other lines (introductions, remarks) are ignored."""
    items = []
    for line in text.splitlines():
        match = LIST_MARKER.match(line)
        if match:
            item = match.group(1)
            labelled = _BOLD_LABEL.match(item)
            items.append(labelled.group(2) if labelled else item)
    return items


def _separated_lines(text: str) -> list[str]:
    """Items from lines split on semicolons, else commas; chatter and long sentences are skipped."""
    items: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.endswith(":") or _is_chatter(line):
            continue
        if ":" in line:
            line = line.rsplit(":", 1)[1]
        separator = ";" if ";" in line else ","
        parts = [part.strip() for part in line.split(separator)]
        if _reads_as_sentence(line, parts):
            continue
        items.extend(part for part in parts if len(part.split()) <= _MAX_LOOSE_WORDS)
    return items


def _is_chatter(line: str) -> bool:
    opening = line.lstrip("*_# ").lower()
    return opening.startswith(_CHATTER_OPENINGS) or line.rstrip().endswith(("!", "?"))


def _reads_as_sentence(line: str, parts: list[str]) -> bool:
    return line.rstrip().endswith(".") and any(len(p.split()) > _MAX_LIST_ITEM_WORDS for p in parts)


def _clean_phrases(raw_items: list[str], distinct: bool = True) -> list[str]:
    """Cleaned, non-empty items in order; with `distinct`, the first spelling of each `phrase_key`."""
    seen: set[str] = set()
    phrases = []
    for raw in raw_items:
        phrase = clean_phrase(raw)
        key = phrase_key(phrase)
        # A fragment with no letters (a stray number, a lone symbol) never describes anything.
        if any(char.isalpha() for char in phrase) and not (distinct and key in seen):
            seen.add(key)
            phrases.append(phrase)
    return phrases


def _preview(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
