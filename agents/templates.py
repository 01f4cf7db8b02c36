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

PROPOSAL_STRICT_REMINDER = """\
Your previous answer could not be read as a list. Answer again with only a JSON object of the form \
{"phrases": ["first phrase", "second phrase"]}: no explanation, no code fences, no numbering."""


def difference_prompt(aspect: Aspect, reference: str, generated: str) -> str:
    """Ask a text-only model for the differences in one aspect between two image descriptions."""
    return _DIFFERENCE_PROMPT.format(
        aspect=_ASPECT_TITLES[aspect], reference=reference.strip(), generated=generated.strip()
    )


def proposal_prompt(request: ProposalRequest) -> str:
    """Ask for short, comma-free candidate phrases that move Image 2 toward Image 1.

    The person's feedback, when there is any, comes first so the model treats it as the priority.
    """
    sections = [
        "You are refining a prompt for a text-to-image model so that the picture it makes "
        "(Image 2) looks more like a reference picture (Image 1)."
    ]
    if request.feedback:
        notes = "\n".join(f"- {note.strip()}" for note in request.feedback if note.strip())
        sections.append(
            "The person guiding this search left these notes. Address them before anything else:\n"
            + notes
        )
    sections.append(f"Current prompt:\n{request.current_prompt.strip() or '(empty)'}")
    differences = request.differences.strip() or "(none were listed)"
    sections.append(f"How Image 2 differs from Image 1:\n{differences}")
    if request.tried:
        tried = "\n".join(f"- {phrase}" for phrase in request.tried)
        sections.append(f"Phrases tried in earlier rounds (never suggest these again):\n{tried}")
    sections.append(
        "Write candidate phrases to add to the prompt, one for each difference, each describing "
        "what Image 1 shows (not what to remove from Image 2). Keep every phrase short, two to six "
        "words, with no commas, and do not repeat what the current prompt already says. "
        f"Give at most {request.max_candidates} phrases. "
        'Answer only with JSON of the form {"phrases": ["...", "..."]}.'
    )
    return "\n\n".join(sections)
