"""The brain roles of the ARPO loop, each a thin object over a `Brain` (agents/brain.py).

- Describer (VLM): content and style descriptions of one image (enhanced framework).
- Comparer (VLM): differences between the reference and the generated image in one two-image call
  (vanilla framework).
- Differ (LLM): differences between two images from their descriptions (enhanced framework).
- LlmProposer (LLM): candidate phrases that would move the generated image toward the reference.

Roles keep no per-run state beyond their brain, so one instance can serve many runs and threads.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from PIL import Image
from pydantic import BaseModel

from arpo.agents import templates
from arpo.agents.brain import Brain, BrainReply
from arpo.agents.image_parts import image_part, user_message
from arpo.agents.phrase_hygiene import PhraseScreen, ScreenedPhrases
from arpo.agents.proposal import Proposal, ProposalRequest
from arpo.agents.reply_parsing import MalformedReplyError, parse_phrase_list
from arpo.core.errors import BrainError


class ImageDescription(BaseModel):
    """What an image shows (content) and how it was made (style), in the VLM's words."""

    content: str
    style: str


class Describer:
    """Describes one image's content and style with two concurrent VLM calls."""

    role = "describer"

    def __init__(self, brain: Brain) -> None:
        self.brain = brain

    def describe(self, image: Image.Image, *, name: str | None = None) -> ImageDescription:
        """Content and style descriptions of `image` (`name`: its content hash, when known); raises
        BrainError if either call fails."""
        picture = image_part(image, content_name=name)
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="arpo-describe") as pool:
            content = pool.submit(self._ask, templates.CONTENT_DESCRIPTION_PROMPT, picture)
            style = pool.submit(self._ask, templates.STYLE_DESCRIPTION_PROMPT, picture)
            return ImageDescription(content=content.result(), style=style.result())

    def _ask(self, instruction: str, picture: dict) -> str:
        reply = self.brain.complete([user_message(instruction, picture)], role=self.role)
        return reply.text.strip()


class Comparer:
    """Lists how the generated image differs from the reference in one two-image VLM call."""

    role = "comparer"

    def __init__(self, brain: Brain) -> None:
        self.brain = brain

    def compare(
        self,
        reference: Image.Image,
        generated: Image.Image,
        *,
        names: tuple[str | None, str | None] = (None, None),
    ) -> str:
        """Differences, one per line, of `generated` (Image 2) from `reference` (Image 1); `names`:
        the two images' content hashes, when known."""
        if not self.brain.multi_image:
            raise BrainError(
                f"{self.role} brain {self.brain.model} takes one image per message; "
                "use --framework enhanced"
            )
        message = user_message(
            templates.COMPARISON_PROMPT,
            "Image 1:",
            image_part(reference, content_name=names[0]),
            "Image 2:",
            image_part(generated, content_name=names[1]),
        )
        return self.brain.complete([message], role=self.role).text.strip()


class Differ:
    """Lists differences between two described images, content and style by separate LLM calls."""

    role = "differ"

    def __init__(self, brain: Brain) -> None:
        self.brain = brain

    def differences(self, reference: ImageDescription, generated: ImageDescription) -> str:
        """Content and style differences of `generated` from `reference`, under two headings."""
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="arpo-differ") as pool:
            content = pool.submit(self._ask, "content", reference.content, generated.content)
            style = pool.submit(self._ask, "style", reference.style, generated.style)
            return f"Content differences:\n{content.result()}\n\nStyle differences:\n{style.result()}"

    def _ask(self, aspect: templates.Aspect, reference: str, generated: str) -> str:
        prompt = templates.difference_prompt(aspect, reference, generated)
        return self.brain.complete([user_message(prompt)], role=self.role).text.strip()


class LlmProposer:
    """Proposes new candidate phrases from the listed differences, the person's feedback first.

    Every phrase in a reply goes through phrase hygiene (agents/phrase_hygiene.py). A reply with
    nothing usable (unreadable, or every phrase dropped) gets one repair request that says what was
    wrong; when that fails too the proposal comes back `unusable`, and the caller proposes offline.
    A well-formed empty list (`{"phrases": []}`) means the model has nothing to add: it is believed.
    """

    role = "proposer"

    def __init__(self, brain: Brain) -> None:
        self.brain = brain

    def propose(self, request: ProposalRequest) -> Proposal:
        """Up to `request.max_candidates` new comma-free phrases, and what hygiene dropped."""
        screen = PhraseScreen(request, templates.proposal_instructions(request))
        messages = [user_message(templates.proposal_prompt(request))]
        first = self._ask(messages)
        screened, problem = _screened_reply(first.text, screen)
        if problem is None:
            return Proposal(phrases=screened.kept, dropped=screened.dropped)
        self.brain.flag_reply(first.call_id, f"no usable phrase ({problem}); asked again")
        repair = [
            *messages,
            {"role": "assistant", "content": first.text},
            user_message(templates.proposal_repair_prompt(request, problem)),
        ]
        second = self._ask(repair)
        repaired, second_problem = _screened_reply(second.text, screen)
        dropped = screened.dropped + repaired.dropped
        if second_problem is None:
            return Proposal(phrases=repaired.kept, dropped=dropped)
        self.brain.flag_reply(
            second.call_id, f"no usable phrase after a repair request ({second_problem})"
        )
        return Proposal(dropped=dropped, unusable=second_problem)

    def _ask(self, messages: list[dict]) -> BrainReply:
        return self.brain.complete(
            messages,
            role=self.role,
            json_schema=templates.CANDIDATE_PHRASES_SCHEMA,
            schema_name=templates.CANDIDATE_PHRASES_SCHEMA_NAME,
        )


def _screened_reply(text: str, screen: PhraseScreen) -> tuple[ScreenedPhrases, str | None]:
    """The reply's phrases after hygiene, and what makes it unusable (None when it is usable).

    A deliberate empty list is usable: it is the model saying it has nothing new to add.
    """
    try:
        raw_phrases = parse_phrase_list(text, distinct=False)
    except MalformedReplyError as error:
        return ScreenedPhrases(), f"it could not be read as a list ({error})"
    screened = screen.screen(raw_phrases)
    if raw_phrases and not screened.kept:
        return screened, screened.problem()
    return screened, None
