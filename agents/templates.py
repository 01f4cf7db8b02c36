"""What each brain role says to its model.

Image 1 is always the reference the person gave; Image 2 is what the text-to-image model made from
the current prompt. Every template asks about what Image 1 has and Image 2 lacks, because the
proposer's phrases must describe Image 1, not the fix to Image 2.
"""

from __future__ import annotations

from typing import Literal

from arpo.agents.proposal import ProposalRequest

Aspect = Literal["content", "style"]

CANDIDATE_PHRASES_SCHEMA_NAME = "candidate_phrases"
CANDIDATE_PHRASES_SCHEMA: dict = {
    "type": "object",
    "properties": {"phrases": {"type": "array", "items": {"type": "string"}}},
    "required": ["phrases"],
    "additionalProperties": False,
}

COMPARISON_PROMPT = """\
You are shown two pictures. The first, Image 1, is a reference. The second, Image 2, was produced by \
a text-to-image model from a written prompt and is meant to resemble Image 1.

Work through them carefully and list every way Image 2 falls short of Image 1. Consider:
- content: subjects, objects, their number, attributes and actions, the setting and background;
- style: medium, art style or movement, rendering technique;
- colour: palette, saturation, colour temperature;
- composition: framing, viewpoint, placement and scale of the subjects;
- lighting: direction, softness, time of day, mood.

Write one difference per line. Each line should say what Image 1 shows that Image 2 lacks or shows \
differently. Skip anything the two pictures share."""

CONTENT_DESCRIPTION_PROMPT = """\
Describe what this picture shows. Name every subject and object with its notable attributes \
(kind, colour, size, clothing, expression), say what is happening and where, and describe the \
surroundings and background, plus any visible text. Be concrete and factual, and leave the \
artistic style aside: another description covers it."""

STYLE_DESCRIPTION_PROMPT = """\
Describe how this picture was made rather than what it shows. Cover the medium (for example \
photograph, oil painting, watercolour, 3D render, pencil drawing), the art style or movement, any \
artist whose manner it recalls, the technique and brushwork or lens effects, the lighting, the \
colour palette, and the apparent resolution and level of detail."""

_DIFFERENCE_PROMPT = """\
Two pictures have been described in words. Image 1 is a reference; Image 2 is an attempt to \
reproduce it with a text-to-image model. Compare only their {aspect}.

The {aspect} of Image 1:
{reference}

The {aspect} of Image 2:
{generated}

List the differences, one per line. Each line should say what Image 1 has that Image 2 lacks or \
renders differently. If the two agree on everything, answer with the single line: no differences."""

_ASPECT_TITLES: dict[Aspect, str] = {"content": "content", "style": "style"}

def difference_prompt(aspect: Aspect, reference: str, generated: str) -> str:
    """Ask a text-only model for the differences in one aspect between two image descriptions."""
    return _DIFFERENCE_PROMPT.format(
        aspect=_ASPECT_TITLES[aspect], reference=reference.strip(), generated=generated.strip()
    )


_PROPOSAL_OPENING = (
    "You are refining a prompt for a text-to-image model so that the picture it makes "
    "(Image 2) looks more like a reference picture (Image 1)."
)
_NO_DIFFERENCES = (
    "No comparison of the two pictures is available this round. Suggest phrases that make the current "
    "prompt more specific about medium, style, lighting, colour and composition."
)


def _proposal_closing(request: ProposalRequest) -> str:
    return (
        "Write candidate phrases to add to the prompt, one for each difference, each describing "
        "what Image 1 shows (not what to remove from Image 2). Keep every phrase short, "
        f"{_words(request.min_words)} to {_words(request.max_words)} words, with no commas, and do not "
        "repeat what the current prompt already says. "
        f"Give at most {request.max_candidates} phrases. "
        'Answer only with JSON of the form {"phrases": ["...", "..."]}.'
    )


def proposal_prompt(request: ProposalRequest) -> str:
    """Ask for short, comma-free candidate phrases that move Image 2 toward Image 1.

    The person's feedback, when there is any, comes first so the model treats it as the priority.
    With no differences listed (no VLM), the model is told so plainly rather than shown an empty
    section, which weak models copy back as a "phrase".
    """
    sections = [_PROPOSAL_OPENING]
    if request.feedback:
        notes = "\n".join(f"- {note.strip()}" for note in request.feedback if note.strip())
        sections.append(
            "The person guiding this search left these notes. Address them before anything else:\n"
            + notes
        )
    sections.append(f"Current prompt:\n{request.current_prompt.strip() or '(empty)'}")
    differences = request.differences.strip()
    sections.append(f"How Image 2 differs from Image 1:\n{differences}" if differences else _NO_DIFFERENCES)
    if request.tried:
        tried = "\n".join(f"- {phrase}" for phrase in request.tried)
        sections.append(f"Phrases already tried with this prompt (do not suggest these again):\n{tried}")
    if request.banned:
        banned = "\n".join(f"- {phrase}" for phrase in request.banned)
        sections.append(f"Phrases the person banned (never suggest these):\n{banned}")
    sections.append(_proposal_closing(request))
    return "\n\n".join(sections)


def proposal_repair_prompt(request: ProposalRequest, problem: str) -> str:
    """Ask again after a reply that held no usable phrase, saying what was wrong with it."""
    return (
        f"Your previous answer gave no phrase that could be used: {problem}. Answer again with only "
        'a JSON object of the form {"phrases": ["...", "..."]}: no explanation, no code fences, no '
        f"numbering. Each phrase must have {_words(request.min_words)} to {_words(request.max_words)} "
        "words, describe something Image 1 shows, and must not copy these instructions, placeholders "
        "or the current prompt."
    )


def proposal_instructions(request: ProposalRequest) -> str:
    """Every fixed sentence the proposer is shown (not the prompt, differences or notes), so phrase
    hygiene can tell a phrase that describes the picture from one that echoes the instructions."""
    return "\n".join(
        (_PROPOSAL_OPENING, _NO_DIFFERENCES, _proposal_closing(request), proposal_repair_prompt(request, ""))
    )


_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def _words(count: int) -> str:
    return _NUMBER_WORDS[count] if 0 <= count < len(_NUMBER_WORDS) else str(count)
