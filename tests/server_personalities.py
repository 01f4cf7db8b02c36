"""How real OpenAI-compatible servers differ, for the scripted test server to imitate.

Each personality decides two things about a chat request: whether the server refuses it (and with
which status and body, copied in shape from the real server), and what becomes of the model's answer
(what the model saw, how long generating it takes, where it stops). The scripted server asks the
personality first and lets its default responder write the answer's words.

- `OpenAiPersonality`: accepts everything the OpenAI API accepts; stops at `max_tokens`.
- `LlamaCppPersonality`: llama-cpp-python's server. `response_format` json_schema is refused with
  HTTP 500 and a printed pydantic validation error (only `text` and `json_object` are accepted). A
  text-only model reads only string content: a message sent as a list of parts, images included, is
  either dropped whole by the built-in chat formats (the model sees an empty prompt, the server counts
  a few template tokens and says nothing) or fails in a model's own chat template with HTTP 500
  "can only concatenate str (not "list") to str". Models served through a multimodal chat handler
  (`--chat_format llava-1-5 --clip_model_path ...`, or per model in a `--config_file`) read parts.
- `OllamaPersonality`: Ollama's /v1 endpoint. json_schema and json_object honoured, `seed` and
  `max_tokens` honoured; an unknown model is a 404 "model ... not found, try pulling it first"; an
  image must be a base64 data URL; an over-long prompt is silently cut to the context window.
- `VllmPersonality`: vLLM's OpenAI server. Errors come as a flat `{"object": "error", ...}` body;
  a request for more images than `--limit-mm-per-prompt` allows, or for more tokens than the
  context holds, is a 400 naming the limit. Unless started with `--enable-auto-tool-choice` (and a
  `--tool-call-parser`), a request offering tools with tool choice "auto" is a 400 naming the flags.
- `BabblerPersonality`: a weak model that never stops by itself: it keeps writing after its answer
  until `max_tokens` (finish_reason "length"), and without `max_tokens` until its context is full,
  which at its speed outlasts any client timeout.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

CHARS_PER_TOKEN = 4
"""The scripted server's rough tokenizer: one token per four characters."""

LLAMA_CPP_SCHEMA_REFUSAL = (
    "1 validation errors:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
    "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema', "
    "'ctx': {'expected': \"'text' or 'json_object'\"}}\n"
)
"""What llama-cpp-python's server says (HTTP 500) when asked for a json_schema response format."""
LLAMA_CPP_LIST_REFUSAL = 'can only concatenate str (not "list") to str'
"""What a model's own Jinja chat template raises (HTTP 500) on content sent as a list of parts."""
VLLM_AUTO_TOOL_CHOICE_REFUSAL = '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
"""What vLLM's server says (HTTP 400) to tools with tool choice "auto" when started without those flags."""
DROPPED_PROMPT_REPLY = "Hello! How can I help you today?"
"""What a model answers to the empty prompt left when a server drops list-of-parts content."""
BABBLE = (
    " Furthermore, it is worth noting that the overall composition, the lighting and the colours "
    "all contribute to the general mood, and in addition the details matter as well as the whole."
)


@dataclass(frozen=True)
class Refusal:
    """An HTTP error the server answers instead of a completion."""

    status: int
    body: dict


@dataclass(frozen=True)
class Generation:
    """What the model produced: its text, why it stopped, and how long writing it took."""

    text: str
    finish_reason: str
    seconds: float


class OpenAiPersonality:
    """A server that accepts every request the OpenAI API accepts."""

    name: str = "openai"
    token_s: float = 0.0
    """Seconds the model takes per generated token."""

    def refusal(self, body: dict) -> Refusal | None:
        """The error this server answers `body` with, or None when it serves it."""
        return None

    template_tokens: int = 0
    """Prompt tokens the server's chat template adds to every request."""

    def sees_prompt(self, body: dict) -> bool:
        """Whether the model gets the request's text (False when the server dropped it)."""
        return True

    def seen_messages(self, body: dict) -> list:
        """The request's messages as the model reads them (what the server counts as the prompt)."""
        return list(body.get("messages") or [])

    def generate(self, body: dict, answer: str) -> Generation:
        """The model's output when `answer` is what it means to say."""
        return _bounded(answer, body.get("max_tokens"), self.token_s)

    def error_body(self, status: int, message: str, error_type: str, param: str | None = None) -> dict:
        """An error in this server's own shape."""
        return {"error": {"message": message, "type": error_type, "param": param, "code": None}}


class LlamaCppPersonality(OpenAiPersonality):
    """llama-cpp-python's OpenAI-compatible server (see the module docstring)."""

    name = "llama-cpp"
    template_tokens = 7  # Gemma 3 270M's default chat format, counted on an empty message

    def __init__(
        self, list_content: Literal["drop", "refuse"] = "drop", vision_models: tuple[str, ...] = ()
    ) -> None:
        """`list_content`: what a text-only model's chat format does with content sent as parts (the
        built-in formats drop it, a model's own Jinja template fails on it). `vision_models`: model
        names served through a multimodal chat handler, which reads parts, images included."""
        self.list_content = list_content
        self.vision_models = vision_models

    def refusal(self, body: dict) -> Refusal | None:
        format_type = (body.get("response_format") or {}).get("type")
        if format_type not in (None, "text", "json_object"):
            return Refusal(500, self.error_body(500, LLAMA_CPP_SCHEMA_REFUSAL, "internal_server_error"))
        if self.list_content == "refuse" and self._unreadable_lists(body):
            return Refusal(500, self.error_body(500, LLAMA_CPP_LIST_REFUSAL, "internal_server_error"))
        return None

    def sees_prompt(self, body: dict) -> bool:
        return not self._unreadable_lists(body)

    def seen_messages(self, body: dict) -> list:
        messages = super().seen_messages(body)
        if not self._unreadable_lists(body):
            return messages
        return [{**message, "content": ""} if isinstance(message.get("content"), list) else message
                for message in messages if isinstance(message, dict)]

    def _unreadable_lists(self, body: dict) -> bool:
        """Whether the request sends parts to a model whose chat format reads only strings."""
        return bool(_parts_lists(body)) and body.get("model") not in self.vision_models


class OllamaPersonality(OpenAiPersonality):
    """Ollama's /v1 chat completions endpoint (see the module docstring)."""

    name = "ollama"

    def __init__(self, models: tuple[str, ...] | None = None, context_tokens: int = 4096) -> None:
        self.models = models
        self.context_tokens = context_tokens

    def refusal(self, body: dict) -> Refusal | None:
        model = body.get("model")
        if self.models is not None and model not in self.models:
            message = f'model "{model}" not found, try pulling it first'
            return Refusal(404, self.error_body(404, message, "api_error"))
        for url in _image_urls(body):
            if not url.startswith("data:image/"):
                return Refusal(400, self.error_body(400, "invalid image input", "invalid_request_error"))
        return None

    def sees_prompt(self, body: dict) -> bool:
        # Ollama cuts an over-long prompt to its context window without a word.
        return _prompt_tokens(body) <= self.context_tokens


class VllmPersonality(OpenAiPersonality):
    """vLLM's OpenAI-compatible server (see the module docstring)."""

    name = "vllm"

    def __init__(self, images_per_prompt: int = 2, context_tokens: int = 8192, auto_tool_choice: bool = False) -> None:
        """`auto_tool_choice`: started with `--enable-auto-tool-choice --tool-call-parser ...` (off by
        default, as in vLLM)."""
        self.images_per_prompt = images_per_prompt
        self.context_tokens = context_tokens
        self.auto_tool_choice = auto_tool_choice

    def refusal(self, body: dict) -> Refusal | None:
        if body.get("tools") and body.get("tool_choice", "auto") == "auto" and not self.auto_tool_choice:
            return Refusal(400, self.error_body(400, VLLM_AUTO_TOOL_CHOICE_REFUSAL, "BadRequestError"))
        images = len(_image_urls(body))
        if images > self.images_per_prompt:
            message = f"At most {self.images_per_prompt} image(s) may be provided in one request."
            return Refusal(400, self.error_body(400, message, "BadRequestError"))
        prompt_tokens = _prompt_tokens(body)
        completion_tokens = body.get("max_tokens") or 0
        if prompt_tokens + completion_tokens > self.context_tokens:
            message = (
                f"This model's maximum context length is {self.context_tokens} tokens. However, you "
                f"requested {prompt_tokens + completion_tokens} tokens ({prompt_tokens} in the "
                f"messages, {completion_tokens} in the completion). Please reduce the length of the "
                "messages or completion."
            )
            return Refusal(400, self.error_body(400, message, "BadRequestError"))
        return None

    def generate(self, body: dict, answer: str) -> Generation:
        # Without max_tokens vLLM lets the reply fill the rest of the context.
        budget = body.get("max_tokens") or self.context_tokens - _prompt_tokens(body)
        return _bounded(answer, budget, self.token_s)

    def error_body(self, status: int, message: str, error_type: str, param: str | None = None) -> dict:
        return {"object": "error", "message": message, "type": error_type, "param": param, "code": status}


class BabblerPersonality(OpenAiPersonality):
    """A model that writes on after its answer until max_tokens or its context is full."""

    name = "babbler"

    def __init__(self, token_s: float = 0.0005, context_tokens: int = 65536) -> None:
        self.token_s = token_s
        self.context_tokens = context_tokens

    def generate(self, body: dict, answer: str) -> Generation:
        budget = body.get("max_tokens") or self.context_tokens
        json_wanted = (body.get("response_format") or {}).get("type") in ("json_object", "json_schema")
        # Under a JSON grammar the model may only add whitespace after the object, and weak models
        # do exactly that; unconstrained it keeps talking.
        filler = "\n" if json_wanted else BABBLE
        needed_chars = budget * CHARS_PER_TOKEN - len(answer)
        text = answer + filler * max(0, needed_chars // len(filler) + 1)
        return _bounded(text, budget, self.token_s)


_PERSONALITIES: dict[str, type[OpenAiPersonality]] = {
    personality.name: personality
    for personality in (OpenAiPersonality, LlamaCppPersonality, OllamaPersonality, VllmPersonality, BabblerPersonality)
}
PERSONALITY_NAMES: tuple[str, ...] = tuple(_PERSONALITIES)
"""openai, llama-cpp, ollama, vllm, babbler: each personality's own `name`."""


def personality_named(name: str, **options: Any) -> OpenAiPersonality:
    """A personality by name ("llama-cpp", ...), with its constructor's options."""
    if name not in _PERSONALITIES:
        raise ValueError(f"unknown server personality {name!r}; choose {', '.join(PERSONALITY_NAMES)}")
    return _PERSONALITIES[name](**options)


def _bounded(text: str, max_tokens: int | None, token_s: float) -> Generation:
    """`text` cut at `max_tokens` rough tokens, and the time writing it took."""
    limit = None if not max_tokens else max_tokens * CHARS_PER_TOKEN
    if limit is not None and len(text) > limit:
        text, finish_reason = text[:limit], "length"
    else:
        finish_reason = "stop"
    return Generation(text, finish_reason, token_s * (len(text) // CHARS_PER_TOKEN))


def _parts_lists(body: dict) -> list[list]:
    return [message["content"] for message in body.get("messages") or []
            if isinstance(message, dict) and isinstance(message.get("content"), list)]


def _image_urls(body: dict) -> list[str]:
    return [part["image_url"]["url"] for parts in _parts_lists(body) for part in parts
            if isinstance(part, dict) and part.get("type") == "image_url"]


def _prompt_tokens(body: dict) -> int:
    """Rough prompt size: its text in tokens plus 85 per image (the scripted server's measure)."""
    text = json.dumps([message.get("content") for message in body.get("messages") or []
                       if isinstance(message, dict)])
    text = re.sub(r"data:image/[^\"]+", "", text)
    return len(text) // CHARS_PER_TOKEN + 85 * len(_image_urls(body))
