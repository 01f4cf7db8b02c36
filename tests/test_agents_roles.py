"""Brain roles over an in-process fake brain: what they send, what they parse, how they run at once.

HTTP adds nothing to these questions; ChatBackend's own tests (test_agents_backend.py,
test_brain_servers.py) cover what happens on the wire.
"""

from __future__ import annotations

import base64
import io
import time

import pytest
from fake_brain import FakeBrain, SentCall, phrases_reply
from PIL import Image
from scripted_server import malformed_phrase_text

from arpo.agents.image_parts import image_part
from arpo.agents.proposal import ProposalRequest
from arpo.agents.roles import Comparer, Describer, Differ, ImageDescription, LlmProposer
from arpo.core.errors import BrainError

RED = (200, 20, 20)
BLUE = (20, 20, 200)
CONTENT = "A heron stands in shallow water."
STYLE = "An ink wash painting on rice paper."


def _decoded(url: str) -> Image.Image:
    header, payload = url.split(",", 1)
    assert header == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def _content_or_style(call: SentCall) -> str:
    """Answers the describer's two questions, which it asks at once and so in no fixed order."""
    return STYLE if "how this picture was made" in call.text else CONTENT


def test_comparer_sends_both_images_in_one_message_reference_first():
    brain = FakeBrain().script("comparer", "Image 1 is red; Image 2 is blue.")

    differences = Comparer(brain).compare(Image.new("RGB", (64, 48), RED),
                                          Image.new("RGB", (64, 48), BLUE))

    [call] = brain.sent
    assert call.role == "comparer" and len(call.messages) == 1
    parts = call.messages[0]["content"]
    image_indexes = [i for i, part in enumerate(parts) if part["type"] == "image_url"]
    assert len(image_indexes) == 2
    assert parts[image_indexes[0] - 1]["text"] == "Image 1:"
    assert parts[image_indexes[1] - 1]["text"] == "Image 2:"
    first, second = (_decoded(url) for url in call.image_urls)
    assert first.getpixel((0, 0)) == RED and second.getpixel((0, 0)) == BLUE
    assert differences == "Image 1 is red; Image 2 is blue."


def test_comparer_refuses_single_image_brains_without_calling():
    brain = FakeBrain(model="one-eyed", multi_image=False)
    image = Image.new("RGB", (8, 8))
    with pytest.raises(BrainError, match="comparer brain one-eyed takes one image per message; use --framework enhanced"):
        Comparer(brain).compare(image, image)
    assert brain.sent == []


def test_describer_runs_content_and_style_concurrently():
    brain = FakeBrain(latency_s=0.3).script("describer", _content_or_style, _content_or_style)

    started = time.monotonic()
    description = Describer(brain).describe(Image.new("RGB", (32, 32), RED))
    elapsed = time.monotonic() - started

    assert description == ImageDescription(content=CONTENT, style=STYLE)
    assert elapsed < 0.5  # one after the other they would take at least 0.6 s
    assert brain.peak_in_flight == 2
    assert [len(call.image_urls) for call in brain.sent] == [1, 1]
    assert {record.role for record in brain.take_calls()} == {"describer"}


def test_differ_compares_content_and_style_separately():
    def difference(call: SentCall) -> str:
        return "Image 1 has a dog." if "a dog on grass" in call.text else "Image 1 is a pastel drawing."

    brain = FakeBrain().script("differ", difference, difference)
    reference = ImageDescription(content="a dog on grass", style="pastel drawing")
    generated = ImageDescription(content="a cat on grass", style="photograph")

    text = Differ(brain).differences(reference, generated)

    assert text == ("Content differences:\nImage 1 has a dog.\n\n"
                    "Style differences:\nImage 1 is a pastel drawing.")
    bodies = [call.text for call in brain.sent]
    assert any("a dog on grass" in body and "a cat on grass" in body and "photograph" not in body
               for body in bodies)
    assert any("pastel drawing" in body and "photograph" in body and "a dog" not in body
               for body in bodies)
    assert all(call.image_urls == [] for call in brain.sent)


def test_proposer_never_returns_tried_or_present_phrases():
    brain = FakeBrain().script("proposer", phrases_reply([
        "golden hour light", "Tabby Cat", "soft focus background, film grain", "rim light",
        "film grain", "party art"]))
    request = ProposalRequest(current_prompt="a tabby cat on a party hat",
                              tried=["Golden Hour Light", "rim light"])

    proposal = LlmProposer(brain).propose(request)

    # "party art" is not found in "party hat": only whole words count as already present.
    assert proposal.phrases == ["soft focus background", "film grain", "party art"]
    assert [(d.phrase, d.reason) for d in proposal.dropped] == [
        ("golden hour light", "tried with this prompt"), ("Tabby Cat", "already in the prompt"),
        ("rim light", "tried with this prompt"), ("film grain", "near-duplicate")]
    assert proposal.source == "llm" and proposal.unusable is None


def test_proposer_truncates_to_max_candidates():
    colours = ["red", "green", "blue", "ochre", "teal", "violet"]
    brain = FakeBrain().script("proposer", phrases_reply(f"{colour} paper texture" for colour in colours))
    assert LlmProposer(brain).propose(ProposalRequest(current_prompt="x", max_candidates=3)).phrases == [
        "red paper texture", "green paper texture", "blue paper texture"]


def test_proposer_asks_with_schema_and_feedback_first():
    brain = FakeBrain().script("proposer", phrases_reply(["ink wash texture"]))
    request = ProposalRequest(current_prompt="a cat", differences="Image 1 is warmer.",
                              tried=["golden hour light"], feedback=["it's a watercolour"])

    assert LlmProposer(brain).propose(request).phrases == ["ink wash texture"]

    [sent] = brain.sent
    assert sent.schema_name == "candidate_phrases"
    assert sent.json_schema["required"] == ["phrases"]
    text = sent.text
    assert text.index("it's a watercolour") < text.index("Image 1 is warmer.")
    assert "golden hour light" in text
    assert "two to six words" in text


def test_word_range_is_asked_for_and_enforced_from_the_request():
    brain = FakeBrain().script("proposer", phrases_reply(["misty", "misty harbour", "misty harbour at dawn"]))
    request = ProposalRequest(current_prompt="a boat", min_words=3, max_words=4)

    proposal = LlmProposer(brain).propose(request)

    assert "three to four words" in brain.sent[0].text
    assert proposal.phrases == ["misty harbour at dawn"]
    assert [d.reason for d in proposal.dropped] == ["too short", "too short"]


def test_no_differences_are_not_shown_as_a_placeholder():
    brain = FakeBrain().script("proposer", phrases_reply([]))
    LlmProposer(brain).propose(ProposalRequest(current_prompt="a boat"))
    text = brain.sent[0].text
    assert "(none were listed)" not in text
    assert "No comparison of the two pictures is available" in text


@pytest.mark.parametrize(
    "shape", ["fenced", "python_list", "numbered", "bulleted", "prose", "semicolons"]
)
def test_proposer_reads_malformed_replies_without_reasking(shape):
    brain = FakeBrain().script("proposer", malformed_phrase_text(shape, ["ink wash", "paper texture"]))

    assert LlmProposer(brain).propose(ProposalRequest(current_prompt="a heron")).phrases == [
        "ink wash", "paper texture"]
    assert len(brain.sent) == 1
    assert [record.ok for record in brain.take_calls()] == [True]


def test_proposer_repairs_once_saying_what_was_wrong():
    brain = FakeBrain().script("proposer", malformed_phrase_text("garbage", []), phrases_reply(["ink wash"]))

    assert LlmProposer(brain).propose(ProposalRequest(current_prompt="a heron")).phrases == ["ink wash"]

    first, second = brain.sent
    assert [m["role"] for m in second.messages] == ["user", "assistant", "user"]
    assert second.messages[1]["content"] == malformed_phrase_text("garbage", [])
    repair = second.messages[-1]["content"]
    repair = repair if isinstance(repair, str) else repair[0]["text"]
    assert "could not be read as a list" in repair and "no phrase that could be used" in repair
    records = brain.take_calls()
    assert [record.ok for record in records] == [False, True]
    assert "asked again" in records[0].error


def test_a_reply_whose_every_phrase_is_dropped_is_repaired_naming_the_phrases():
    brain = FakeBrain().script("proposer", phrases_reply(["space", "contrast contrast"]),
                               phrases_reply(["misty harbour light"]))
    proposal = LlmProposer(brain).propose(ProposalRequest(current_prompt="a heron"))

    assert proposal.phrases == ["misty harbour light"]
    repair = brain.sent[1].messages[-1]["content"]
    repair = repair if isinstance(repair, str) else repair[0]["text"]
    assert '"space" (too short)' in repair and '"contrast contrast" (repeated words)' in repair
    assert [d.reason for d in proposal.dropped] == ["too short", "repeated words"]


def test_proposer_reports_unusable_after_a_failed_repair():
    brain = FakeBrain().script("proposer", malformed_phrase_text("garbage", []),
                               phrases_reply(["phrase 1", "<phrase>"]), phrases_reply(["never asked for"]))

    proposal = LlmProposer(brain).propose(ProposalRequest(current_prompt="a heron"))

    assert proposal.phrases == [] and proposal.unusable
    assert "placeholder" in proposal.unusable
    assert len(brain.sent) == 2
    records = brain.take_calls()
    assert [record.ok for record in records] == [False, False]
    assert "after a repair request" in records[1].error


def test_an_empty_list_is_believed():
    brain = FakeBrain().script("proposer", phrases_reply([]))
    proposal = LlmProposer(brain).propose(ProposalRequest(current_prompt="a heron", tried=["ink wash"]))
    assert proposal.phrases == [] and proposal.unusable is None
    assert len(brain.sent) == 1  # an explicit empty list is not malformed


def test_a_brain_that_fails_for_good_is_left_to_the_caller():
    """Retries are the brain's business, not the role's: one call, and its failure goes up unchanged."""
    brain = FakeBrain().script("proposer", BrainError("proposer brain fake-model: gave up after 3 attempts"))
    with pytest.raises(BrainError, match="gave up after 3 attempts"):
        LlmProposer(brain).propose(ProposalRequest(current_prompt="a heron"))
    assert len(brain.sent) == 1


def test_image_part_downscales_and_flattens_alpha():
    transparent = Image.new("RGBA", (2000, 1000), (0, 0, 0, 0))
    part = image_part(transparent)
    assert part["type"] == "image_url"
    decoded = _decoded(part["image_url"]["url"])
    assert decoded.size == (768, 384) and decoded.mode == "RGB"
    assert decoded.getpixel((10, 10)) == (255, 255, 255)


def test_image_part_jpeg_and_sixteen_bit_grey():
    grey = Image.new("I;16", (40, 30), 65535)
    url = image_part(grey, encoding="JPEG")["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.size == (40, 30) and min(decoded.getpixel((5, 5))) > 250


def test_a_named_image_part_is_remembered_under_its_name_and_encodes_the_same():
    red = Image.new("RGB", (24, 16), (200, 10, 10))
    named = image_part(red, content_name="a" * 64)
    assert named == image_part(red)  # the same encoding whichever key remembers it
    # The name stands for the pixels: a caller that names an image is trusted, so nothing re-hashes it.
    assert image_part(Image.new("RGB", (24, 16), (0, 0, 0)), content_name="a" * 64) == named
