"""Brain roles over real HTTP: what they send, what they parse, and how they run concurrently."""

from __future__ import annotations

import base64
import io
import time

import pytest
from fixtures_brain import brain_server, scripted_backend  # noqa: F401
from PIL import Image

from arpo.agents.image_parts import image_part
from arpo.agents.proposal import ProposalRequest
from arpo.agents.roles import Comparer, Describer, Differ, ImageDescription, LlmProposer
from arpo.agents.scripted_server import DEFAULT_CONTENT_DESCRIPTIONS, DEFAULT_STYLE_DESCRIPTIONS, ScriptedReply
from arpo.core.errors import BrainError

RED = (200, 20, 20)
BLUE = (20, 20, 200)


def _decoded(url: str) -> Image.Image:
    header, payload = url.split(",", 1)
    assert header == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def test_comparer_sends_both_images_in_one_message_reference_first(brain_server):
    backend = scripted_backend(brain_server)

    differences = Comparer(backend).compare(Image.new("RGB", (64, 48), RED),
                                            Image.new("RGB", (64, 48), BLUE))

    [request] = brain_server.requests
    assert request.kind == "comparison" and len(request.messages) == 1
    parts = request.messages[0]["content"]
    image_indexes = [i for i, part in enumerate(parts) if part["type"] == "image_url"]
    assert len(image_indexes) == 2
    assert parts[image_indexes[0] - 1]["text"] == "Image 1:"
    assert parts[image_indexes[1] - 1]["text"] == "Image 2:"
    first, second = (_decoded(url) for url in request.image_urls)
    assert first.getpixel((0, 0)) == RED and second.getpixel((0, 0)) == BLUE
    assert differences.startswith("Image 1")


def test_comparer_refuses_single_image_servers_without_calling(brain_server):
    backend = scripted_backend(brain_server, multi_image=False)
    image = Image.new("RGB", (8, 8))
    with pytest.raises(BrainError, match="--framework enhanced"):
        Comparer(backend).compare(image, image)
    assert brain_server.requests == []


def test_describer_runs_content_and_style_concurrently(brain_server):
    brain_server.brain.latency_s = 0.3
    backend = scripted_backend(brain_server)
    describer = Describer(backend)
    image = Image.new("RGB", (32, 32), RED)

    started = time.monotonic()
    description = describer.describe(image)
    elapsed = time.monotonic() - started

    assert description == ImageDescription(content=DEFAULT_CONTENT_DESCRIPTIONS[0],
                                           style=DEFAULT_STYLE_DESCRIPTIONS[0])
    assert elapsed < 0.5  # sequential calls would take at least 0.6 s
    assert backend.call_log.peak_in_flight == 2
    assert [len(request.image_urls) for request in brain_server.requests] == [1, 1]
    assert {record.role for record in backend.call_log.drain()} == {"describer"}


def test_differ_compares_content_and_style_separately(brain_server):
    brain_server.enqueue(ScriptedReply.text("Image 1 has a dog."),
                         ScriptedReply.text("Image 1 is a pastel drawing."))
    backend = scripted_backend(brain_server)
    reference = ImageDescription(content="a dog on grass", style="pastel drawing")
    generated = ImageDescription(content="a cat on grass", style="photograph")

    text = Differ(backend).differences(reference, generated)

    assert text.startswith("Content differences:\n")
    assert "\n\nStyle differences:\n" in text
    assert {"Image 1 has a dog.", "Image 1 is a pastel drawing."} <= set(text.splitlines())
    bodies = [request.text for request in brain_server.requests]
    assert any("a dog on grass" in body and "a cat on grass" in body and "photograph" not in body
               for body in bodies)
    assert any("pastel drawing" in body and "photograph" in body and "a dog" not in body
               for body in bodies)
    assert all(request.kind == "differences" for request in brain_server.requests)


def test_proposer_never_returns_tried_or_present_phrases(brain_server):
    brain_server.enqueue(ScriptedReply.phrases([
        "golden hour light", "Tabby Cat", "soft focus background, film grain", "rim light",
        "film grain", "party art"]))
    backend = scripted_backend(brain_server)
    request = ProposalRequest(current_prompt="a tabby cat on a party hat",
                              tried=["Golden Hour Light", "rim light"])

    proposal = LlmProposer(backend).propose(request)

    # "party art" is not found in "party hat": only whole words count as already present.
    assert proposal.phrases == ["soft focus background", "film grain", "party art"]
    assert [(d.phrase, d.reason) for d in proposal.dropped] == [
        ("golden hour light", "tried with this prompt"), ("Tabby Cat", "already in the prompt"),
        ("rim light", "tried with this prompt"), ("film grain", "near-duplicate")]
    assert proposal.source == "llm" and proposal.unusable is None


def test_proposer_truncates_to_max_candidates(brain_server):
    colours = ["red", "green", "blue", "ochre", "teal", "violet"]
    brain_server.enqueue(ScriptedReply.phrases([f"{colour} paper texture" for colour in colours]))
    proposer = LlmProposer(scripted_backend(brain_server))
    assert proposer.propose(ProposalRequest(current_prompt="x", max_candidates=3)).phrases == [
        "red paper texture", "green paper texture", "blue paper texture"]


def test_proposer_asks_with_schema_and_feedback_first(brain_server):
    backend = scripted_backend(brain_server)
    request = ProposalRequest(current_prompt="a cat", differences="Image 1 is warmer.",
                              tried=["golden hour light"], feedback=["it's a watercolour"])

    phrases = LlmProposer(backend).propose(request).phrases

    [sent] = brain_server.requests
    assert sent.response_format["json_schema"]["name"] == "candidate_phrases"
    text = sent.text
    assert text.index("it's a watercolour") < text.index("Image 1 is warmer.")
    assert "golden hour light" in text
    assert "two to six words" in text
    # the scripted brain skips pool phrases the request mentions, so later rounds get new ones
    assert phrases and "golden hour light" not in phrases


def test_word_range_is_asked_for_and_enforced_from_the_request(brain_server):
    brain_server.enqueue(ScriptedReply.phrases(["misty", "misty harbour", "misty harbour at dawn"]))
    request = ProposalRequest(current_prompt="a boat", min_words=3, max_words=4)

    proposal = LlmProposer(scripted_backend(brain_server)).propose(request)

    assert "three to four words" in brain_server.requests[0].text
    assert proposal.phrases == ["misty harbour at dawn"]
    assert [d.reason for d in proposal.dropped] == ["too short", "too short"]


def test_no_differences_are_not_shown_as_a_placeholder(brain_server):
    LlmProposer(scripted_backend(brain_server)).propose(ProposalRequest(current_prompt="a boat"))
    text = brain_server.requests[0].text
    assert "(none were listed)" not in text
    assert "No comparison of the two pictures is available" in text


@pytest.mark.parametrize(
    "shape", ["fenced", "python_list", "numbered", "bulleted", "prose", "semicolons"]
)
def test_proposer_reads_malformed_replies_without_reasking(brain_server, shape):
    brain_server.enqueue(ScriptedReply.malformed(shape, ["ink wash", "paper texture"]))
    backend = scripted_backend(brain_server, json_schema_output=False)

    assert LlmProposer(backend).propose(ProposalRequest(current_prompt="a heron")).phrases == [
        "ink wash", "paper texture"]
    assert len(brain_server.requests) == 1


def test_proposer_repairs_once_saying_what_was_wrong(brain_server):
    brain_server.enqueue(ScriptedReply.malformed("garbage"), ScriptedReply.phrases(["ink wash"]))
    backend = scripted_backend(brain_server)

    assert LlmProposer(backend).propose(ProposalRequest(current_prompt="a heron")).phrases == ["ink wash"]

    first, second = brain_server.requests
    assert [m["role"] for m in second.messages] == ["user", "assistant", "user"]
    repair = second.messages[-1]["content"]
    repair = repair if isinstance(repair, str) else repair[0]["text"]
    assert "could not be read as a list" in repair and "no phrase that could be used" in repair
    records = backend.call_log.drain()
    assert [record.ok for record in records] == [False, True]
    assert "asked again" in records[0].error


def test_a_reply_whose_every_phrase_is_dropped_is_repaired_naming_the_phrases(brain_server):
    brain_server.enqueue(ScriptedReply.phrases(["space", "contrast contrast"]),
                         ScriptedReply.phrases(["misty harbour light"]))
    proposal = LlmProposer(scripted_backend(brain_server)).propose(ProposalRequest(current_prompt="a heron"))

    assert proposal.phrases == ["misty harbour light"]
    repair = brain_server.requests[1].messages[-1]["content"]
    repair = repair if isinstance(repair, str) else repair[0]["text"]
    assert '"space" (too short)' in repair and '"contrast contrast" (repeated words)' in repair
    assert [d.reason for d in proposal.dropped] == ["too short", "repeated words"]


def test_proposer_reports_unusable_after_a_failed_repair(brain_server):
    brain_server.enqueue(ScriptedReply.malformed("garbage"), ScriptedReply.phrases(["phrase 1", "<phrase>"]),
                         ScriptedReply.phrases(["never asked for"]))
    backend = scripted_backend(brain_server)

    proposal = LlmProposer(backend).propose(ProposalRequest(current_prompt="a heron"))

    assert proposal.phrases == [] and proposal.unusable
    assert "placeholder" in proposal.unusable
    assert len(brain_server.requests) == 2
    records = backend.call_log.drain()
    assert [record.ok for record in records] == [False, False]
    assert "after a repair request" in records[1].error


def test_default_phrase_pool_runs_dry(brain_server):
    pool = ["ink wash", "paper texture"]
    brain_server.brain.phrase_pool = pool
    proposer = LlmProposer(scripted_backend(brain_server))
    proposal = proposer.propose(ProposalRequest(current_prompt="a heron", tried=pool))
    assert proposal.phrases == [] and proposal.unusable is None
    assert len(brain_server.requests) == 1  # an explicit empty list is not malformed


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
