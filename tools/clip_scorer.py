"""CLIP similarity between images and texts (open_clip), the score the ARPO loop selects phrases by.

Embeddings come back L2-normalised, float32, on the CPU, so callers can keep them, compare them with
a dot product and never think about devices (under --low-vram the model itself rests in CPU memory
and takes a turn on the accelerator for each forward, see tools/accelerator_turns.py). Every call
encodes its whole batch in one forward pass;
counters record how many passes and texts were spent, for benchmarks. `ClipScorer.tiny()` builds a
small random open_clip model with the real CLIP tokenizer for tests.
"""

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ContextManager

import open_clip
import torch
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image

from arpo.core.errors import InvalidInputError
from arpo.tools.accelerator_turns import HOME, AcceleratorTurns, Seat, Stay, turns_on
from arpo.tools.devices import dtype_name, pick_device, pick_dtype
from arpo.tools.hub import MISSING_WEIGHTS_ERRORS, load_or_fail
from arpo.tools.micro_batching import DEFAULT_WAIT_S, MicroBatcher

DEFAULT_CLIP_MODEL = "ViT-L-14"
DEFAULT_CLIP_WEIGHTS = "openai"
# Keys of an open_clip weights tag that describe how its images were preprocessed in training.
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")
_SCHEMAS = ("hf-hub:", "local-dir:")
_REMEMBERED_TEXTS = 4096
_REMEMBERED_IMAGES = 64
"""Named image embeddings kept (`named_image_embedding`): references, which a batch, an evaluation or
a session's runs score again and again."""
"""Texts whose token counts and ids a scorer keeps (77 ids are a few hundred bytes; a tokenizer call
is not free)."""


class ClipScorer:
    """Image and text embeddings from one CLIP model, and the cosine similarities between them.

    Thread-safe: forwards are serialised by a lock, so one scorer can serve several runs.
    `is_tiny` marks the random test model, whose scores mean nothing. `low_vram`: the model rests in
    CPU memory and goes to `device` for its turns (`turns`: by default the device's own).
    Counters: `text_forward_passes`, `image_forward_passes`, `texts_encoded`, `forward_seconds`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Any,
        tokenizer: Any,
        *,
        name: str,
        device: torch.device | str = "cpu",
        description: dict[str, Any] | None = None,
        is_tiny: bool = False,
        low_vram: bool = False,
        turns: AcceleratorTurns | None = None,
    ):
        self.name = name
        self.is_tiny = is_tiny
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.low_vram = low_vram
        self.turns = turns or turns_on(self.device)
        self._seat = Seat.for_module("clip", model, stay=Stay.UNTIL_NEEDED if low_vram else Stay.RESIDENT)
        if low_vram:
            model.to(HOME)
        self.context_length = int(getattr(tokenizer, "context_length", None) or 77)
        self.text_forward_passes = 0
        self.image_forward_passes = 0
        self.texts_encoded = 0
        self.forward_seconds = 0.0
        self._description = description or {}
        self._forward_lock = threading.Lock()
        # Separate from the forward lock so counting tokens never waits behind a long forward pass.
        self._tokenizer_lock = threading.Lock()
        # Token counts by text: selection asks about the same prompts and phrases round after round.
        self._token_counts: OrderedDict[str, int] = OrderedDict()
        self._token_ids: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._named_images: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._named_images_lock = threading.Lock()
        self._embed_dim = _embed_dim(model)
        self._text_batcher: MicroBatcher | None = None
        self._image_batcher: MicroBatcher | None = None
        self.dtype = next(model.parameters()).dtype

    # ---- embeddings -------------------------------------------------------------------------------

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[n, d] unit-length image embeddings, in one forward pass (shared with other threads' images
        while `batching` is active)."""
        if not images:
            return torch.empty(0, self.embedding_size())
        if self._image_batcher is not None:
            return self._image_batcher(list(images))
        return self._encode_images_now(images)

    def named_image_embedding(self, image: Image.Image, name: str) -> torch.Tensor:
        """`image`'s unit embedding, remembered under `name`: a name the caller has for exactly these
        pixels (the image store's hash). Each run of a reference needs its embedding; this way it is
        preprocessed and encoded once per process (a photo's preprocessing alone is about 1 ms)."""
        with self._named_images_lock:
            known = self._named_images.get(name)
            if known is not None:
                self._named_images.move_to_end(name)
                return known
        embedding = self.encode_images([image])[0]
        with self._named_images_lock:
            self._named_images[name] = embedding
            while len(self._named_images) > _REMEMBERED_IMAGES:
                self._named_images.popitem(last=False)
        return embedding

    def _encode_images_now(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = torch.stack([self.preprocess(image.convert("RGB")) for image in images])
        with self.turn(), self._forward_lock:
            started = time.perf_counter()
            with torch.inference_mode():
                embeddings = self.model.encode_image(pixels.to(self.device, self.dtype), normalize=True)
            self.forward_seconds += time.perf_counter() - started
            self.image_forward_passes += 1
        return embeddings.float().cpu()

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """[n, d] unit-length text embeddings, in one forward pass.

        Texts longer than the context (77 tokens) are cut by the tokenizer, exactly as the model
        would see them.
        """
        if not texts:
            return torch.empty(0, self.embedding_size())
        if self._text_batcher is not None:
            return self._text_batcher(list(texts))
        return self._encode_texts_now(texts)

    def _encode_texts_now(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self._token_rows(texts)
        with self.turn(), self._forward_lock:
            started = time.perf_counter()
            with torch.inference_mode():
                embeddings = self.model.encode_text(tokens.to(self.device), normalize=True)
            self.forward_seconds += time.perf_counter() - started
            self.text_forward_passes += 1
            self.texts_encoded += len(texts)
        return embeddings.float().cpu()

    def _token_rows(self, texts: Sequence[str]) -> torch.Tensor:
        """The tokenizer's [n, context] ids for `texts`, each text tokenized once: greedy selection
        scores the same prompt-plus-phrase texts again in every round that keeps none of them."""
        with self._tokenizer_lock:
            new = [text for text in dict.fromkeys(texts) if text not in self._token_ids]
            if new:
                for text, row in zip(new, self.tokenizer(new)):
                    self._token_ids[text] = row
            rows = []
            for text in texts:
                self._token_ids.move_to_end(text)
                rows.append(self._token_ids[text])
            while len(self._token_ids) > _REMEMBERED_TEXTS:
                self._token_ids.popitem(last=False)
            return torch.stack(rows)

    @contextmanager
    def batching(self, participants: Callable[[], int], wait_s: float = DEFAULT_WAIT_S) -> Iterator[None]:
        """While active, text and image encodings asked for by several threads at about the same time
        run as one forward each (`arpo batch --parallel`); `participants` says how many threads may join."""
        self._text_batcher = MicroBatcher(_joined(self._encode_texts_now), participants, wait_s=wait_s)
        self._image_batcher = MicroBatcher(_joined(self._encode_images_now), participants, wait_s=wait_s)
        try:
            yield
        finally:
            self._text_batcher = self._image_batcher = None

    def turn(self) -> ContextManager[None]:
        """While active the model is on `device` (a no-op unless it rests in CPU memory): each forward
        takes one, and so does whoever runs the model directly for longer (PEZ's optimisation)."""
        return self.turns.turn(self._seat)

    def text_image_similarity(self, image_embedding: torch.Tensor, texts: Sequence[str]) -> list[float]:
        """Cosine similarity of each text to one image embedding (one text forward for all texts)."""
        text_embeddings = self.encode_texts(texts)
        if not len(text_embeddings):
            return []
        reference = _unit_vector(image_embedding)
        return (text_embeddings @ reference).tolist()  # one conversion, not a tensor per score

    @staticmethod
    def image_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
        """Cosine similarity of two embeddings (any shape that flattens to one vector each)."""
        cosine = float(_unit_vector(a) @ _unit_vector(b))
        return max(-1.0, min(1.0, cosine))

    def embedding_size(self) -> int:
        """Length of the embeddings this model produces."""
        if self._embed_dim is None:
            # Towers without a plain projection matrix: measure once (not counted as a scoring pass).
            with self._tokenizer_lock:
                tokens = self.tokenizer([""])
            with self.turn(), self._forward_lock, torch.inference_mode():
                probe = self.model.encode_text(tokens.to(self.device))
            self._embed_dim = int(probe.shape[-1])
        return self._embed_dim

    # ---- prompt length ----------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        """Content tokens in `text` (start/end markers excluded), before the model's truncation."""
        with self._tokenizer_lock:
            known = self._token_counts.get(text)
            if known is None:
                known = self._token_counts[text] = _content_token_count(self.tokenizer, text)
                if len(self._token_counts) > _REMEMBERED_TEXTS:
                    self._token_counts.popitem(last=False)
            return known

    def token_budget(self) -> int:
        """Content tokens that fit the context: 75 for CLIP's 77 positions."""
        return self.context_length - 2

    def sees_all(self, text: str) -> bool:
        """Whether the model reads all of `text`; past its window the tokenizer silently cuts the rest,
        so a score says nothing about what was cut."""
        return self.count_tokens(text) <= self.token_budget()

    def describe(self) -> dict[str, Any]:
        """Which CLIP this is, as plain JSON values, for the run record."""
        return {
            "name": self.name,
            **self._description,
            "context_length": self.context_length,
            "device": str(self.device),
            "low_vram": self.low_vram,
            "dtype": dtype_name(self.dtype),
            "open_clip_version": open_clip.__version__,
            "torch_version": torch.__version__,
        }

    # ---- construction -----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        model: str = DEFAULT_CLIP_MODEL,
        pretrained: str | None = DEFAULT_CLIP_WEIGHTS,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        low_vram: bool = False,
        turns: AcceleratorTurns | None = None,
    ) -> "ClipScorer":
        """Load an open_clip model with its weights (`low_vram`: into CPU memory, to visit `device`).

        `model` is an open_clip architecture ("ViT-L-14"), "hf-hub:org/repo" or "local-dir:/path";
        `pretrained` a weights tag ("openai", "laion2b_s32b_b82k"), a checkpoint file, or None for the
        architecture's default tag. Weights come from the local cache unless the hub is allowed and
        reachable; otherwise ModelUnavailableError is raised at once. `dtype` defaults to float16 on
        CUDA and float32 elsewhere; embeddings come back float32 either way.
        """
        torch_device = pick_device(device)
        torch_dtype = pick_dtype(torch_device, dtype)
        source = _weights_source(model, pretrained)

        def load(local_files_only: bool) -> tuple[torch.nn.Module, Any, Any]:
            factory_kwargs = source.factory_kwargs(local_files_only) | {"device": HOME if low_vram else torch_device}
            built, _, preprocess = open_clip.create_model_and_transforms(**factory_kwargs)
            # Inside the loader: some architectures use a hub tokenizer, which must be cached too.
            return built, preprocess, open_clip.get_tokenizer(factory_kwargs["model_name"])

        built, preprocess, tokenizer = load_or_fail(source.display_name, load)
        built.to(dtype=torch_dtype)
        description = {
            "model": source.model,
            "pretrained": source.pretrained,
            "embed_dim": _embed_dim(built),
            "image_size": _image_size(built),
        }
        return cls(
            built,
            preprocess,
            tokenizer,
            name=source.display_name,
            device=torch_device,
            description=description,
            low_vram=low_vram,
            turns=turns,
        )

    @classmethod
    def tiny(
        cls,
        seed: int = 0,
        *,
        dtype: torch.dtype | None = None,
        low_vram: bool = False,
        turns: AcceleratorTurns | None = None,
    ) -> "ClipScorer":
        """A small random CLIP (32-pixel images, width-32 towers) with the real 49408-token tokenizer.

        The same `seed` always builds the same weights; the name carries the seed so caches of its
        embeddings never mix two different tiny models. `dtype` defaults to float32 (it runs on the CPU,
        or on `turns`' device, a CPU device of its own in tests).
        """
        vision = open_clip.CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8, image_size=32)
        text = open_clip.CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=2)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = open_clip.CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text)
        model.to(dtype=dtype or torch.float32)
        preprocess = open_clip.image_transform(32, is_train=False)
        description = {"model": "tiny", "pretrained": None, "seed": seed, "embed_dim": 32, "image_size": 32}
        return cls(
            model,
            preprocess,
            SimpleTokenizer(context_length=77),
            name=f"tiny-clip-seed{seed}",
            device=turns.device if turns is not None else HOME,
            description=description,
            is_tiny=True,
            low_vram=low_vram,
            turns=turns,
        )


def parse_clip_spec(spec: str) -> tuple[str, str | None]:
    """Split a command-line CLIP choice into (model, weights tag).

    "ViT-L-14/openai" -> ("ViT-L-14", "openai"); "ViT-L-14" -> ("ViT-L-14", None), meaning the default
    tag; "hf-hub:org/repo" and "local-dir:/path" carry their own weights -> (spec, None).
    """
    if spec.startswith(_SCHEMAS) or "/" not in spec:
        return spec, None
    model, _, tag = spec.rpartition("/")
    return model, tag or None


# ---- where weights come from -----------------------------------------------------------------------


class _WeightsSource:
    """How to hand one (model, weights) choice to open_clip without letting it touch the network.

    open_clip downloads tagged weights itself, with the hub client's long retries. Instead we resolve
    the checkpoint file (cache first), then give open_clip the file path together with the settings
    the tag would have applied: its preprocessing and its activation (OpenAI's weights need QuickGELU,
    which open_clip only warns about when given the bare tag).
    """

    def __init__(self, model: str, pretrained: str | None, tag_config: dict[str, Any] | None):
        self.model = model
        self.pretrained = pretrained
        self.tag_config = tag_config

    @property
    def display_name(self) -> str:
        return f"{self.model}/{self.pretrained}" if self.pretrained else self.model

    def factory_kwargs(self, local_files_only: bool) -> dict[str, Any]:
        if self.model.startswith("hf-hub:"):
            folder = _hub_snapshot(self.model.removeprefix("hf-hub:"), local_files_only)
            return {"model_name": f"local-dir:{folder}"}
        if self.model.startswith("local-dir:"):
            return {"model_name": self.model}
        if self.tag_config is None:  # a checkpoint file on disk
            return {"model_name": self.model, "pretrained": self.pretrained}
        return {
            "model_name": self.model,
            "pretrained": _tag_checkpoint(self.tag_config, local_files_only),
            **self.architecture_settings(),
        }

    def architecture_settings(self) -> dict[str, Any]:
        """What the tag changes in the model itself: its activation and its preprocessing."""
        if self.tag_config is None:
            return {}
        return {
            "force_quick_gelu": bool(self.tag_config.get("quick_gelu", False)),
            "force_preprocess_cfg": {
                key: value for key, value in self.tag_config.items() if key in _PREPROCESS_KEYS
            },
        }


def untrained_clip(model: str, pretrained: str | None) -> torch.nn.Module:
    """The model a (model, weights) choice builds, with random weights: for checkpoints that carry
    their own weights but must run the same architecture (QuickGELU for OpenAI's tags)."""
    source = _weights_source(model, pretrained)
    return open_clip.create_model(model, pretrained=None, **source.architecture_settings())


def _weights_source(model: str, pretrained: str | None) -> _WeightsSource:
    """Check the names a person gave before any loading, so typos fail with a useful message."""
    if model.startswith(_SCHEMAS):
        return _WeightsSource(model, None, None)
    if open_clip.get_model_config(model) is None:
        raise InvalidInputError(f"Unknown CLIP model '{model}'; see open_clip.list_models() for the names.")
    if pretrained and os.path.isfile(pretrained):
        return _WeightsSource(model, pretrained, None)
    known_tags = open_clip.list_pretrained_tags_by_model(model)
    default_tag = DEFAULT_CLIP_WEIGHTS if DEFAULT_CLIP_WEIGHTS in known_tags else next(iter(known_tags), None)
    tag = pretrained or default_tag
    tag_config = open_clip.get_pretrained_cfg(model, tag) if tag else None
    if not tag_config:
        known = ", ".join(known_tags) or "none"
        raise InvalidInputError(f"Unknown weights '{pretrained}' for CLIP '{model}'; known: {known}.")
    return _WeightsSource(model, tag, tag_config)


def _tag_checkpoint(tag_config: dict[str, Any], local_files_only: bool) -> str:
    """Path of a tag's checkpoint file, from the cache or (if allowed) downloaded."""
    if tag_config.get("hf_hub"):
        # open_clip's convention: "org/repo/file.bin", or "org/repo/" for its default file name.
        repo_id, filename = os.path.split(tag_config["hf_hub"])
        return _hub_file(repo_id, filename or HF_WEIGHTS_NAME, local_files_only)
    url = tag_config.get("url", "")
    cached = Path("~/.cache/clip").expanduser() / os.path.basename(url)
    if cached.is_file():
        return str(cached)
    if local_files_only or not url:
        raise FileNotFoundError(f"weights not cached at {cached}")
    return open_clip.download_pretrained_from_url(url)


def _hub_file(repo_id: str, filename: str, local_files_only: bool) -> str:
    """One file from a hub repo, preferring its safetensors twin the way open_clip does."""
    from huggingface_hub import hf_hub_download

    last_error: BaseException | None = None
    for candidate in _safetensors_first(filename):
        try:
            return hf_hub_download(repo_id, candidate, local_files_only=local_files_only)
        except MISSING_WEIGHTS_ERRORS as missing:
            last_error = missing
    raise FileNotFoundError(f"{repo_id}/{filename}: {last_error}")


def _safetensors_first(filename: str) -> list[str]:
    if filename == HF_WEIGHTS_NAME:
        return [HF_SAFE_WEIGHTS_NAME, filename]
    stem, suffix = os.path.splitext(filename)
    return [stem + ".safetensors", filename] if suffix in (".bin", ".pth") else [filename]


def _hub_snapshot(repo_id: str, local_files_only: bool) -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id, local_files_only=local_files_only)


# ---- small helpers ---------------------------------------------------------------------------------


def _unit_vector(embedding: torch.Tensor | Sequence[float]) -> torch.Tensor:
    vector = torch.as_tensor(embedding, dtype=torch.float32).flatten().cpu()
    return vector / vector.norm().clamp_min(1e-12)


def _content_token_count(tokenizer: Any, text: str) -> int:
    if isinstance(tokenizer, SimpleTokenizer):
        return len(tokenizer.encode(text))
    wrapped = getattr(tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps a transformers one
    if wrapped is not None:
        return len(wrapped(text, add_special_tokens=False)["input_ids"])
    # Unknown tokenizer: count what survives its own truncation, minus the two markers.
    return max(0, int((tokenizer([text])[0] != 0).sum()) - 2)


def _embed_dim(model: torch.nn.Module) -> int | None:
    projection = getattr(model, "text_projection", None)
    if isinstance(projection, torch.Tensor):
        return int(projection.shape[-1])
    if isinstance(projection, torch.nn.Linear):
        return int(projection.out_features)
    return None


def _image_size(model: torch.nn.Module) -> Any:
    size = getattr(getattr(model, "visual", None), "image_size", None)
    return list(size) if isinstance(size, tuple) else size


def _joined(encode: Callable[[Sequence[Any]], torch.Tensor]) -> Callable[[list[list[Any]]], list[torch.Tensor]]:
    """One encoding of several callers' inputs, split back into each caller's rows."""

    def encode_all(requests: list[list[Any]]) -> list[torch.Tensor]:
        embeddings = encode([item for request in requests for item in request])
        return list(torch.split(embeddings, [len(request) for request in requests]))

    return encode_all
