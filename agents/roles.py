"""The brain roles of the ARPO loop, each a thin object over a ChatBackend.

- Describer (VLM): content and style descriptions of one image (enhanced framework).
- Comparer (VLM): differences between the reference and the generated image in one two-image call
  (vanilla framework).
- Differ (LLM): differences between two images from their descriptions (enhanced framework).
- LlmProposer (LLM): candidate phrases that would move the generated image toward the reference.

Roles keep no per-run state beyond their backend, so one instance can serve many runs and threads.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

from PIL import Image
from pydantic import BaseModel

from arpo.agents import templates
from arpo.agents.backend import BrainReply, ChatBackend
from arpo.agents.image_parts import image_part, user_message
from arpo.agents.proposal import ProposalRequest
from arpo.agents.reply_parsing import MalformedReplyError, clean_phrase, parse_phrase_list
from arpo.errors import BrainError


class ImageDescription(BaseModel):
    """What an image shows (content) and how it was made (style), in the VLM's words."""

    content: str
    style: str


class Describer:
    """Describes one image's content and style with two concurrent VLM calls."""

    role = "describer"

    def __init__(self, backend: ChatBackend) -> None:
        self.backend = backend

    def describe(self, image: Image.Image) -> ImageDescription:
        """Content and style descriptions of `image`; raises BrainError if either call fails."""
        picture = image_part(image)
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="arpo-describe") as pool:
            content = pool.submit(self._ask, templates.CONTENT_DESCRIPTION_PROMPT, picture)
            style = pool.submit(self._ask, templates.STYLE_DESCRIPTION_PROMPT, picture)
            return ImageDescription(content=content.result(), style=style.result())

    def _ask(self, instruction: str, picture: dict) -> str:
        reply = self.backend.complete([user_message(instruction, picture)], role=self.role)
        return reply.text.strip()


class Comparer:
    """Lists how the generated image differs from the reference in one two-image VLM call."""

    role = "comparer"

    def __init__(self, backend: ChatBackend) -> None:
        self.backend = backend

    def compare(self, reference: Image.Image, generated: Image.Image) -> str:
        """Differences, one per line, of `generated` (Image 2) from `reference` (Image 1)."""
        if not self.backend.config.multi_image:
            raise BrainError(
                f"{self.role} brain {self.backend.config.model} takes one image per message; "
                "use --framework enhanced"
            )
        message = user_message(
            templates.COMPARISON_PROMPT,
            "Image 1:",
            image_part(reference),
            "Image 2:",
            image_part(generated),
        )
        return self.backend.complete([message], role=self.role).text.strip()


class Differ:
    """Lists differences between two described images, content and style by separate LLM calls."""

    role = "differ"

    def __init__(self, backend: ChatBackend) -> None:
        self.backend = backend

    def differences(self, reference: ImageDescription, generated: ImageDescription) -> str:
        """Content and style differences of `generated` from `reference`, under two headings."""
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="arpo-differ") as pool:
            content = pool.submit(self._ask, "content", reference.content, generated.content)
            style = pool.submit(self._ask, "style", reference.style, generated.style)
            return f"Content differences:\n{content.result()}\n\nStyle differences:\n{style.result()}"

    def _ask(self, aspect: templates.Aspect, reference: str, generated: str) -> str:
        prompt = templates.difference_prompt(aspect, reference, generated)
        return self.backend.complete([user_message(prompt)], role=self.role).text.strip()


class LlmProposer:
    """Proposes new candidate phrases from the listed differences, the person's feedback first.

    Returns an empty list when the model has nothing new to offer or its replies stay unreadable;
    an empty proposal ends the loop.
    """

    role = "proposer"

    def __init__(self, backend: ChatBackend) -> None:
        self.backend = backend

    def propose(self, request: ProposalRequest) -> list[str]:
        """Up to `request.max_candidates` new comma-free phrases, none tried before or in the prompt."""
        messages = [user_message(templates.proposal_prompt(request))]
        first = self._ask(messages)
        try:
            raw_phrases = parse_phrase_list(first.text)
        except MalformedReplyError:
            self.backend.call_log.mark_unusable(first.call_id, "malformed reply: no phrases; re-asked")
            retry_messages = [
                *messages,
                {"role": "assistant", "content": first.text},
                user_message(templates.PROPOSAL_STRICT_REMINDER),
            ]
            second = self._ask(retry_messages)
            try:
                raw_phrases = parse_phrase_list(second.text)
            except MalformedReplyError:
                self.backend.call_log.mark_unusable(
                    second.call_id, "malformed reply twice: no phrases; proposing none"
                )
                return []
        return select_new_phrases(raw_phrases, request)

    def _ask(self, messages: list[dict]) -> BrainReply:
        return self.backend.complete(
            messages,
            role=self.role,
            json_schema=templates.CANDIDATE_PHRASES_SCHEMA,
            schema_name=templates.CANDIDATE_PHRASES_SCHEMA_NAME,
        )


def select_new_phrases(raw_phrases: list[str], request: ProposalRequest) -> list[str]:
    """Comma-free phrases from `raw_phrases` that are new to this run, capped at max_candidates.

    A phrase holding commas is split into its parts; parts already tried (case-insensitive) or
    already present in the current prompt as whole words are dropped.
    """
    tried = {_normalised(phrase) for phrase in request.tried}
    prompt = _normalised(request.current_prompt)
    chosen: list[str] = []
    seen: set[str] = set()
    for raw in raw_phrases:
        for part in raw.split(","):
            phrase = clean_phrase(part)
            key = _normalised(phrase)
            if not key or key in tried or key in seen or _contains_words(prompt, key):
                continue
            seen.add(key)
            chosen.append(phrase)
    return chosen[: max(request.max_candidates, 0)]


def _normalised(text: str) -> str:
    return " ".join(clean_phrase(text).casefold().split())


def _contains_words(text: str, phrase: str) -> bool:
    """Whether `phrase` occurs in `text` as whole words (so 'art' is not found in 'party')."""
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text) is not None
