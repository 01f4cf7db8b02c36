"""The loop benchmark's brain: a chat server inside the process, reached through the real ChatBackend.

The benchmark measures what the framework costs around a brain of known latency, so the brain must
cost exactly that latency and the framework must do all of its own work: encode images, build the
request, go through the openai SDK (request building, JSON, response parsing) and the backend
(retries, records, reply checks). An `httpx2.MockTransport` under the SDK's client does this without
a socket or a server thread: each request is answered on the thread that sent it, after sleeping the
fixed latency, with a plausible reply for what the loop asked:

- a request that wants JSON (the proposer's)  -> `{"phrases": [...]}`, pool phrases the request does
  not mention yet, so each iteration gets new candidates;
- two images (the vanilla comparer)           -> differences, one per line;
- one image (the enhanced describer)          -> a style description when asked about the medium,
  else a content description;
- no image (the enhanced differ)              -> a difference list.
"""

from __future__ import annotations

import json
import time
from itertools import count

import httpx2

from arpo.agents.backend import BackendConfig, ChatBackend

MODEL = "benchmark-brain"
BASE_URL = "http://benchmark-brain.invalid/v1"
"""Never resolved: the mock transport answers before any connection would be made."""

PHRASES: tuple[str, ...] = (
    "low evening sun",
    "dewy morning grass",
    "blurred backdrop",
    "faded polaroid look",
    "thick impasto strokes",
    "aerial drone view",
    "foggy harbour",
    "snowy pine forest",
    "teal and amber palette",
    "long exposure trails",
    "overcast winter sky",
    "macro lens closeup",
    "baroque gilded frame",
    "rain soaked street",
    "symmetrical framing",
    "neon sign glow",
    "charcoal sketch lines",
    "paper cutout layers",
)
"""Offered in this order. The loop keeps a phrase only when it raises CLIP similarity, and the tiny
stack's CLIP is untrained, so which phrases do is luck: this order lets each of the default three
steps keep one (a run that stops early would measure fewer iterations; tests/test_loop_benchmark.py
checks it)."""
COMPARISON = (
    "Image 1 is lit by a low sun from the left; Image 2 is lit evenly from the front.\n"
    "Image 1 has a soft, out-of-focus background; Image 2 is sharp from front to back.\n"
    "Image 1 is painted with visible strokes; Image 2 looks like a photograph."
)
CONTENT = "A grey cat curled on a knitted blanket next to a steaming mug on a wooden table."
STYLE = "A loose oil painting with thick strokes, warm side light and a narrow palette of browns."
DIFFERENCES = (
    "Image 1 has warm side light; Image 2 has flat light.\n"
    "Image 1 shows a mug beside the cat; Image 2 has no mug."
)

_TOKENS_PER_IMAGE = 85
_CHARS_PER_TOKEN = 4


class BenchmarkBrain:
    """Answers chat completion requests in process after `latency_s`, `phrases_per_reply` at a time."""

    def __init__(self, latency_s: float, phrases_per_reply: int = 6) -> None:
        self.latency_s = latency_s
        self.phrases_per_reply = phrases_per_reply
        self._ids = count()

    def backend(self) -> ChatBackend:
        """A ChatBackend with the CLI's defaults for a vLLM brain, whose requests this brain answers."""
        config = BackendConfig.from_provider("vllm", MODEL, base_url=BASE_URL)
        client = httpx2.Client(transport=httpx2.MockTransport(self.answer))
        return ChatBackend(config, http_client=client)

    def answer(self, request: httpx2.Request) -> httpx2.Response:
        """The reply to one request, after the brain's latency (a real server takes it too)."""
        time.sleep(self.latency_s)
        body = json.loads(request.content)
        text, images = _text_and_images(body["messages"])
        reply = self._reply_text(body, text, images)
        return httpx2.Response(200, json=self._completion(body["model"], reply, text, images))

    def _reply_text(self, body: dict, text: str, images: int) -> str:
        if "response_format" in body:
            fresh = [phrase for phrase in PHRASES if phrase not in text.lower()]
            return json.dumps({"phrases": fresh[: self.phrases_per_reply]})
        if images >= 2:
            return COMPARISON
        if images == 1:
            return STYLE if "medium" in text.lower() else CONTENT
        return DIFFERENCES

    def _completion(self, model: str, reply: str, text: str, images: int) -> dict:
        """A chat.completion body. Its prompt token count is rough but honest: the backend refuses a
        reply whose count is too small for the text sent (a prompt the model cannot have read)."""
        prompt_tokens = max(1, len(text) // _CHARS_PER_TOKEN + _TOKENS_PER_IMAGE * images)
        completion_tokens = max(1, len(reply) // _CHARS_PER_TOKEN)
        return {
            "id": f"chatcmpl-benchmark-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }


def _text_and_images(messages: list[dict]) -> tuple[str, int]:
    """All text of `messages` joined, and how many images they carry."""
    texts: list[str] = []
    images = 0
    for message in messages:
        content = message.get("content")
        parts = content if isinstance(content, list) else [{"type": "text", "text": content or ""}]
        for part in parts:
            if part.get("type") == "image_url":
                images += 1
            else:
                texts.append(part.get("text") or "")
    return "\n".join(texts), images
