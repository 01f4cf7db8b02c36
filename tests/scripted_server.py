"""A scripted OpenAI-compatible chat server: a brain for the tests of ChatBackend and of whole runs.

It speaks real HTTP on 127.0.0.1, so the `openai` SDK talks to it exactly as it would to vLLM or the
OpenAI API. Each request is answered by the next scripted override, if any is queued, or else by a
default responder that picks a plausible reply from the kind of request:

- asks for candidate phrases (`response_format` schema named "candidate_phrases", or the prompt asks
  for candidate phrases)      -> JSON `{"phrases": [...]}` drawn from a phrase pool
- carries two images          -> a comparison (one difference per line)
- carries one image           -> a content or style description
- carries no image            -> a difference list
- offers `tools` (agent mode)  -> the next reply queued with `enqueue_agent`, else a call of `finish`

The phrase pool is read statelessly: each proposal gets the first few pool phrases that do not
already appear in the request (the current prompt and earlier-tried phrases are in it), so proposals
change from one iteration to the next, and an exhausted pool answers `{"phrases": []}`.

Every request is recorded (headers, JSON body, kind) so tests can check what the client sent, and
when the client hung up on it (`ReceivedRequest.disconnected_at`: a timed-out request must be
cancelled, not left generating).

A personality (`server_personalities`, beside this file) makes the server behave like llama-cpp-python,
Ollama, vLLM or a model that babbles to its context limit: which requests it refuses and how, what
the model sees, how long it writes and where it stops. The default, "openai", accepts everything.

It lives with the tests and is no part of the package (the loop benchmark has its own brain in
process, eval/benchmark_brain.py). Usable without pytest, with tests/ on the import path:

    with BrainServer(ScriptedBrain(latency_s=0.2)) as server:
        print(server.base_url)

or from a shell: `python tests/scripted_server.py --latency 0.2` (prints the base URL, serves until
interrupted).
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from server_personalities import (
    DROPPED_PROMPT_REPLY,
    PERSONALITY_NAMES,
    OpenAiPersonality,
    personality_named,
)

RequestKind = Literal["phrases", "comparison", "description", "differences", "agent"]
MalformedShape = Literal[
    "fenced", "python_list", "numbered", "bulleted", "prose", "semicolons", "commas", "garbage"
]

DEFAULT_PHRASE_POOL: tuple[str, ...] = (
    "golden hour light",
    "soft focus background",
    "warm orange palette",
    "oil painting texture",
    "dramatic cloudy sky",
    "shallow depth of field",
    "tabby cat portrait",
    "rim lighting",
    "muted pastel tones",
    "highly detailed fur",
    "wide angle view",
    "impressionist brushwork",
    "misty morning atmosphere",
    "centered composition",
    "vintage film grain",
    "cinematic lighting",
)

DEFAULT_COMPARISONS: tuple[str, ...] = (
    "Image 1 is lit by warm golden light while Image 2 is lit flatly.\n"
    "Image 1 has a softly blurred background; Image 2 is sharp throughout.\n"
    "Image 1 looks like an oil painting; Image 2 looks like a photograph.",
    "Image 1 shows a dramatic cloudy sky that Image 2 lacks.\n"
    "Image 1 uses muted pastel colours; Image 2 is saturated.",
)
DEFAULT_CONTENT_DESCRIPTIONS: tuple[str, ...] = (
    "A tabby cat sits on a wooden windowsill beside a potted plant, looking out at a street.",
)
DEFAULT_STYLE_DESCRIPTIONS: tuple[str, ...] = (
    "An oil painting with visible impressionist brushwork, warm golden light and a muted palette.",
)
DEFAULT_DIFFERENCES: tuple[str, ...] = (
    "Image 1 shows warm golden light; Image 2 is lit flatly.\n"
    "Image 1 has a potted plant that Image 2 lacks.",
)

_ERROR_DEFAULTS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided: {key}.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to use this model.", "invalid_request_error", None),
    404: ("The model does not exist.", "invalid_request_error", "model_not_found"),
    429: ("Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request.", "server_error", None),
    503: ("The server is overloaded.", "server_error", None),
}


@dataclass(frozen=True)
class ScriptedReply:
    """One scripted answer. Build it with the class methods; None fields mean "use the default"."""

    content: str | None = None
    """Reply text; None lets the default responder write it."""
    status_code: int = 200
    error_body: dict | None = None
    delay_s: float = 0.0
    no_choices: bool = False
    function_calls: tuple[dict, ...] | None = None
    """Function calls of the reply, in the wire shape (id, type, function: name and arguments text);
    build them with `tool_call` / `tool_calls`."""

    @classmethod
    def text(cls, content: str) -> ScriptedReply:
        """A successful reply with exactly this text (an empty string makes an empty reply)."""
        return cls(content=content)

    @classmethod
    def phrases(cls, phrases: Iterable[str]) -> ScriptedReply:
        """A clean JSON phrase list."""
        return cls(content=json.dumps({"phrases": list(phrases)}))

    @classmethod
    def tool_call(cls, name: str, arguments: dict | str | None = None, *, text: str | None = None) -> ScriptedReply:
        """A reply calling one function; `arguments` as a dict is sent as JSON, as a str exactly as
        given (so a test can send malformed JSON)."""
        return cls.tool_calls((name, arguments), text=text)

    @classmethod
    def tool_calls(cls, *calls: tuple[str, dict | str | None], text: str | None = None) -> ScriptedReply:
        """A reply calling several functions at once, each `(name, arguments)` as in `tool_call`."""
        wire = tuple(
            {"id": f"call_{uuid.uuid4().hex[:8]}", "type": "function",
             "function": {"name": name, "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments or {})}}
            for name, arguments in calls
        )
        return cls(content=text, function_calls=wire)

    @classmethod
    def empty(cls) -> ScriptedReply:
        """A reply whose message content is empty."""
        return cls(content="")

    @classmethod
    def without_choices(cls) -> ScriptedReply:
        """A 200 reply with an empty `choices` list."""
        return cls(no_choices=True)

    @classmethod
    def status(cls, code: int, body: dict | str | None = None) -> ScriptedReply:
        """An HTTP error. `body` is sent as is when a dict, wrapped as the error message when a str,
        and defaults to an OpenAI-style error for the code (a 401 echoes the caller's key, the worst
        thing a real server might do)."""
        if isinstance(body, str):
            body = {"error": {"message": body, "type": "invalid_request_error", "code": None}}
        return cls(status_code=code, error_body=body)

    @classmethod
    def quota_exhausted(cls) -> ScriptedReply:
        """A 429 whose code says the account is out of quota (not worth retrying)."""
        return cls.status(
            429,
            {
                "error": {
                    "message": "You exceeded your current quota, please check your plan.",
                    "type": "insufficient_quota",
                    "code": "insufficient_quota",
                }
            },
        )

    @classmethod
    def schema_rejected(cls) -> ScriptedReply:
        """A 400 saying the server cannot do `response_format` json_schema."""
        return cls.status(
            400,
            {
                "error": {
                    "message": "response_format type json_schema is not supported for this model",
                    "type": "invalid_request_error",
                    "param": "response_format",
                    "code": None,
                }
            },
        )

    @classmethod
    def delay(cls, seconds: float, then: ScriptedReply | None = None) -> ScriptedReply:
        """Wait `seconds` before answering with `then` (the default responder's answer if None)."""
        base = then or cls()
        return cls(
            content=base.content,
            status_code=base.status_code,
            error_body=base.error_body,
            delay_s=base.delay_s + seconds,
            no_choices=base.no_choices,
            function_calls=base.function_calls,
        )

    @classmethod
    def malformed(cls, shape: MalformedShape, phrases: Iterable[str] | None = None) -> ScriptedReply:
        """A phrase list in a shape other than clean JSON ("garbage" holds no phrases at all)."""
        return cls(content=malformed_phrase_text(shape, list(phrases or DEFAULT_PHRASE_POOL[:3])))


def malformed_phrase_text(shape: MalformedShape, phrases: list[str]) -> str:
    """How an unruly model might write `phrases`."""
    if shape == "fenced":
        return "Here are my suggestions:\n```json\n" + json.dumps({"phrases": phrases}) + "\n```"
    if shape == "python_list":
        return "[" + ", ".join(repr(phrase) for phrase in phrases) + "]"
    if shape == "numbered":
        return "\n".join(f"{index}. {phrase}" for index, phrase in enumerate(phrases, start=1))
    if shape == "bulleted":
        markers = ["-", "*", "•"]
        return "\n".join(f"{markers[i % 3]} {phrase}" for i, phrase in enumerate(phrases))
    if shape == "prose":
        listing = "\n".join(f"- {phrase}" for phrase in phrases)
        return f"Sure! These phrases should help:\n{listing}\nLet me know if you need more."
    if shape == "semicolons":
        return "; ".join(phrases)
    if shape == "commas":
        return ", ".join(phrases) + "."
    if shape == "garbage":
        return "Sorry, I cannot help with that request."
    raise ValueError(f"unknown malformed shape {shape!r}")


@dataclass
class ReceivedRequest:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict | None
    kind: RequestKind | None
    received_at: float = field(default_factory=time.monotonic)
    disconnected_at: float | None = None
    """When the client closed the connection before the answer was sent (None: it waited)."""

    @property
    def authorization(self) -> str | None:
        """The Authorization header, if the client sent one."""
        return self.headers.get("authorization")

    @property
    def response_format(self) -> dict | None:
        return (self.body or {}).get("response_format")

    @property
    def messages(self) -> list[dict]:
        return (self.body or {}).get("messages") or []

    @property
    def image_urls(self) -> list[str]:
        """URLs of every image_url part, in order, across all messages."""
        return [part["image_url"]["url"] for part in _content_parts(self.messages)
                if part.get("type") == "image_url"]

    @property
    def text(self) -> str:
        """All text of all messages joined, for keyword checks."""
        pieces = []
        for message in self.messages:
            if isinstance(message.get("content"), str):
                pieces.append(message["content"])
        pieces += [part.get("text", "") for part in _content_parts(self.messages)
                   if part.get("type") == "text"]
        return "\n".join(pieces)


def _content_parts(messages: list[dict]) -> list[dict]:
    return [part for message in messages if isinstance(message.get("content"), list)
            for part in message["content"] if isinstance(part, dict)]


def classify_request(body: dict) -> RequestKind:
    """What the client is asking for, judged the way the default responder needs it."""
    response_format = body.get("response_format") or {}
    schema_name = (response_format.get("json_schema") or {}).get("name")
    if body.get("tools"):
        return "agent"
    probe = ReceivedRequest("POST", "", {}, body, None)
    lowered = probe.text.lower()
    if schema_name == "candidate_phrases" or "candidate phrases" in lowered or '{"phrases"' in lowered:
        return "phrases"
    images = len(probe.image_urls)
    if images >= 2:
        return "comparison"
    if images == 1:
        return "description"
    return "differences"


@dataclass(frozen=True)
class _Answer:
    status: int
    body: dict
    delay_s: float


class ScriptedBrain:
    """Decides what each request gets: queued overrides first, then the default responder.

    latency_s: fixed wait before every answer (for benchmarks).
    personality: which real server to imitate (a name from PERSONALITY_NAMES or an instance).
    phrase_pool / phrases_per_reply: where default proposals come from and how many per reply.
    comparisons / content_descriptions / style_descriptions / differences: replies cycled per kind.
    """

    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        phrase_pool: Iterable[str] = DEFAULT_PHRASE_POOL,
        phrases_per_reply: int = 4,
        comparisons: Iterable[str] = DEFAULT_COMPARISONS,
        content_descriptions: Iterable[str] = DEFAULT_CONTENT_DESCRIPTIONS,
        style_descriptions: Iterable[str] = DEFAULT_STYLE_DESCRIPTIONS,
        differences: Iterable[str] = DEFAULT_DIFFERENCES,
        personality: OpenAiPersonality | str = "openai",
    ) -> None:
        self.latency_s = latency_s
        self.personality = (
            personality_named(personality) if isinstance(personality, str) else personality
        )
        self.phrase_pool = list(phrase_pool)
        self.phrases_per_reply = phrases_per_reply
        self._text_pools = {
            "comparison": list(comparisons),
            "content": list(content_descriptions),
            "style": list(style_descriptions),
            "differences": list(differences),
        }
        self._served = {name: 0 for name in self._text_pools}
        self._script: deque[ScriptedReply] = deque()
        self._agent_script: deque[ScriptedReply] = deque()
        self._requests: list[ReceivedRequest] = []
        self._lock = threading.Lock()

    def enqueue(self, *replies: ScriptedReply) -> None:
        """Queue overrides; each request consumes the next one, whatever its kind."""
        with self._lock:
            self._script.extend(replies)

    def enqueue_agent(self, *replies: ScriptedReply) -> None:
        """Queue replies for the requests that offer tools (the agent's), in order; other requests
        never take them. When none is left, an agent request gets a call of `finish`."""
        with self._lock:
            self._agent_script.extend(replies)

    @property
    def agent_pending(self) -> int:
        """Agent replies not consumed yet."""
        with self._lock:
            return len(self._agent_script)

    @property
    def pending(self) -> int:
        """Overrides not consumed yet."""
        with self._lock:
            return len(self._script)

    @property
    def requests(self) -> list[ReceivedRequest]:
        """Every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def requests_of_kind(self, kind: RequestKind) -> list[ReceivedRequest]:
        return [request for request in self.requests if request.kind == kind]

    def record(self, request: ReceivedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def answer(self, request: ReceivedRequest) -> _Answer:
        """Status, JSON body and delay for a chat completion request."""
        with self._lock:
            override = self._script.popleft() if self._script else None
            if override is None and request.kind == "agent":
                override = self._agent_script.popleft() if self._agent_script else _DEFAULT_AGENT_REPLY
        reply = override or ScriptedReply()
        delay = self.latency_s + reply.delay_s
        if reply.status_code != 200:
            return _Answer(reply.status_code, self._error_body(reply, request), delay)
        body = request.body or {}
        refusal = self.personality.refusal(body)
        if refusal is not None:
            return _Answer(refusal.status, refusal.body, delay)
        prompt_tokens = self.prompt_tokens(body)
        if reply.no_choices:
            return _Answer(200, _completion(request, None, prompt_tokens), delay)
        if reply.function_calls is not None:
            completion = _completion(request, reply.content, prompt_tokens, "tool_calls", reply.function_calls)
            return _Answer(200, completion, delay)
        if reply.content is not None:
            content = reply.content
        elif self.personality.sees_prompt(body):
            content = self.default_text(request)
        else:
            content = DROPPED_PROMPT_REPLY
        generation = self.personality.generate(body, content)
        completion = _completion(request, generation.text, prompt_tokens, generation.finish_reason)
        return _Answer(200, completion, delay + generation.seconds)

    def prompt_tokens(self, body: dict) -> int:
        """The prompt size the server reports: what the model read (a dropped message costs only the
        chat template's tokens), one token per four characters plus 85 per image."""
        seen = ReceivedRequest("POST", "", {}, {**body, "messages": self.personality.seen_messages(body)}, None)
        text_tokens = len(seen.text) // 4 if seen.text else 0
        return max(1, self.personality.template_tokens + text_tokens + 85 * len(seen.image_urls))

    def default_text(self, request: ReceivedRequest) -> str:
        """The default responder: a plausible reply for the request's kind."""
        if request.kind == "phrases":
            return json.dumps({"phrases": self.fresh_phrases(request.text)})
        if request.kind == "description":
            lowered = request.text.lower()
            return self._next_text("style" if "medium" in lowered else "content")
        if request.kind == "comparison":
            return self._next_text("comparison")
        return self._next_text("differences")

    def fresh_phrases(self, request_text: str) -> list[str]:
        """The first pool phrases the request does not already mention."""
        lowered = request_text.lower()
        fresh = [phrase for phrase in self.phrase_pool if phrase.lower() not in lowered]
        return fresh[: self.phrases_per_reply]

    def _next_text(self, pool_name: str) -> str:
        with self._lock:
            pool = self._text_pools[pool_name]
            text = pool[self._served[pool_name] % len(pool)]
            self._served[pool_name] += 1
            return text

    @staticmethod
    def _error_body(reply: ScriptedReply, request: ReceivedRequest) -> dict:
        if reply.error_body is not None:
            return reply.error_body
        message, error_type, code = _ERROR_DEFAULTS.get(
            reply.status_code, ("Request failed.", "server_error", None)
        )
        key = (request.authorization or "").removeprefix("Bearer ").strip()
        return {"error": {"message": message.format(key=key), "type": error_type, "param": None,
                          "code": code}}


_DEFAULT_AGENT_REPLY = ScriptedReply.tool_call("finish", {"reason": "the scripted agent has nothing more to do"})
"""What an agent request gets when no reply is queued for it: the run ends."""


def _rough_tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _completion(request: ReceivedRequest, content: str | None, prompt_tokens: int, finish_reason: str = "stop",
                tool_calls: tuple[dict, ...] | None = None) -> dict:
    """An OpenAI chat.completion body reporting `prompt_tokens` and a rough completion token count."""
    choices = []
    completion_tokens = 0
    if content is not None or tool_calls is not None:
        written = (content or "") + (json.dumps(list(tool_calls)) if tool_calls else "")
        completion_tokens = _rough_tokens(written) if written else 0
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if tool_calls is not None:
            message["tool_calls"] = list(tool_calls)
        choices = [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}]
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": (request.body or {}).get("model", "scripted"),
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


class _Handler(BaseHTTPRequestHandler):
    """HTTP plumbing; the owning server's brain decides every answer."""

    server: _BrainHTTPServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._record(None)
        if self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [
                {"id": "scripted", "object": "model", "created": 0, "owned_by": "arpo-tests"}]})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:  # noqa: N802
        body = self._read_json()
        if self.path.rstrip("/") != "/v1/chat/completions" or body is None:
            self._record(body)
            self._send(404 if body is not None else 400,
                       {"error": {"message": f"cannot handle {self.path}", "type": "invalid"}})
            return
        request = self._record(body)
        answer = self.server.brain.answer(request)
        if answer.delay_s and not self._wait_for_client(request, answer.delay_s):
            return  # the client hung up, or the server is shutting down: drop the reply
        self._send(answer.status, answer.body)

    def _wait_for_client(self, request: ReceivedRequest, seconds: float) -> bool:
        """Wait `seconds` as a generating model would, watching the connection; False when the
        client closed it (recorded on the request) or the server stopped."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.server.stopping.is_set():
                return False
            readable, _, _ = select.select([self.connection], [], [], min(left, 0.02))
            if readable and self._peer_closed():
                request.disconnected_at = time.monotonic()
                self.close_connection = True
                return False
        return True

    def _peer_closed(self) -> bool:
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _record(self, body: dict | None) -> ReceivedRequest:
        request = ReceivedRequest(
            method=self.command,
            path=self.path,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
            kind=classify_request(body) if body is not None else None,
        )
        self.server.brain.record(request)
        return request

    def _read_json(self) -> dict | None:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            raw = self._read_chunked()
        else:
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    def _read_chunked(self) -> bytes:
        chunks = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def _send(self, status: int, body: dict) -> None:
        payload = json.dumps(body).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout); nothing to tell it
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # keep test output quiet


class _BrainHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], brain: ScriptedBrain) -> None:
        self.brain = brain
        self.stopping = threading.Event()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up mid-request is normal in timeout tests


class BrainServer:
    """A running scripted server: start(), base_url, brain, requests, stop(). Also a context manager."""

    def __init__(self, brain: ScriptedBrain | None = None, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.brain = brain or ScriptedBrain()
        self._address = (host, port)
        self._http: _BrainHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> BrainServer:
        """Bind (a free port when port=0) and serve from a daemon thread."""
        self._http = _BrainHTTPServer(self._address, self.brain)
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05},
            name="scripted-brain-server", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, release delayed handlers and close the socket."""
        if self._http is None:
            return
        self._http.stopping.set()
        self._http.shutdown()
        self._http.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._http = None

    @property
    def port(self) -> int:
        if self._http is None:
            raise RuntimeError("the brain server is not running")
        return self._http.server_address[1]

    @property
    def base_url(self) -> str:
        """What to pass as the SDK's base_url."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[ReceivedRequest]:
        return self.brain.requests

    def enqueue(self, *replies: ScriptedReply) -> None:
        self.brain.enqueue(*replies)

    def __enter__(self) -> BrainServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main() -> None:
    """Serve the default scripted brain until interrupted (to point a CLI run at by hand)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each reply")
    parser.add_argument("--personality", choices=PERSONALITY_NAMES, default="openai",
                        help="which real server to imitate")
    options = parser.parse_args()
    brain = ScriptedBrain(latency_s=options.latency, personality=options.personality)
    with BrainServer(brain, port=options.port) as server:
        print(server.base_url, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
