"""Image captioning (BLIP / BLIP-2), the usual first prompt P0 of the ARPO loop.

Real models load by Hugging Face id or local folder; the architecture is chosen from the loaded
config's `model_type`. `Captioner.tiny()` builds a small random BLIP with a real WordPiece tokenizer,
whose captions are nonsense made of real words.
"""

import re
import threading
import time
from typing import Any

import torch
import transformers
from PIL import Image
from transformers import (
    AutoConfig,
    AutoProcessor,
    BertTokenizer,
    Blip2ForConditionalGeneration,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessor,
    BlipProcessor,
)

from arpo.errors import InvalidInputError
from arpo.tools.devices import pick_device, pick_dtype
from arpo.tools.hub import load_or_fail

DEFAULT_CAPTIONER = "Salesforce/blip2-opt-2.7b"
# Returned when a model decodes to nothing (only special tokens): the loop needs some starting text,
# and a neutral one lets the later rounds add all of the content.
FALLBACK_CAPTION = "an image"
DEFAULT_MAX_NEW_TOKENS = 30
TINY_NAME = "tiny"
TINY_MAX_NEW_TOKENS = 8

# model_type in the checkpoint's config -> the generation class that reads it.
_CAPTIONING_CLASSES = {
    "blip-2": Blip2ForConditionalGeneration,
    "blip": BlipForConditionalGeneration,
}
_TINY_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")
_TINY_WORD_COUNT = 300


class Captioner:
    """Captions one image at a time; thread-safe (generation is serialised by a lock)."""

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        *,
        name: str,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        revision: str | None = None,
    ):
        self.name = name
        self.model = model.eval()
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        self.revision = revision
        self.calls = 0
        self.forward_seconds = 0.0
        self._lock = threading.Lock()

    def caption(self, image: Image.Image) -> str:
        """A short description of `image`; never empty (falls back to "an image")."""
        with self._lock:
            inputs = self.processor(images=image.convert("RGB"), return_tensors="pt")
            inputs = {key: value.to(self.model.device) for key, value in inputs.items()}
            # Pixels must match the model's dtype (float16 on CUDA); token ids stay integers.
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
            started = time.perf_counter()
            with torch.inference_mode():
                generated = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
            self.forward_seconds += time.perf_counter() - started
            self.calls += 1
            text = self.processor.batch_decode(generated, skip_special_tokens=True)[0]
        return " ".join(text.split()) or FALLBACK_CAPTION

    def describe(self) -> dict[str, Any]:
        """Which captioner this is, as plain JSON values, for the run record."""
        return {
            "model": self.name,
            "revision": self.revision,
            "architecture": type(self.model).__name__,
            "max_new_tokens": self.max_new_tokens,
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "device": str(self.model.device),
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
        }

    @classmethod
    def from_pretrained(
        cls,
        name: str = DEFAULT_CAPTIONER,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    ) -> "Captioner":
        """Load a BLIP or BLIP-2 captioner by Hugging Face id or local folder.

        Only cached weights are used unless the hub is allowed (no HF_HUB_OFFLINE) and reachable;
        otherwise ModelUnavailableError is raised at once.
        """
        torch_device = pick_device(device)
        torch_dtype = dtype or pick_dtype(torch_device)

        def load(local_files_only: bool) -> tuple[torch.nn.Module, Any, str | None]:
            config = AutoConfig.from_pretrained(name, local_files_only=local_files_only)
            model_class = _captioning_class(name, config.model_type)
            model = model_class.from_pretrained(name, dtype=torch_dtype, local_files_only=local_files_only)
            processor = AutoProcessor.from_pretrained(name, local_files_only=local_files_only)
            return model, processor, getattr(config, "_commit_hash", None)

        model, processor, revision = load_or_fail(name, load)
        model.to(torch_device)
        return cls(model, processor, name=name, max_new_tokens=max_new_tokens, revision=revision)

    @classmethod
    def tiny(cls, seed: int = 0) -> "Captioner":
        """A small random BLIP (32-pixel images, width-32 towers) with a few-hundred-word vocabulary.

        The same `seed` always builds the same weights, so its (meaningless) captions are repeatable.
        """
        tokenizer = BertTokenizer(vocab=_tiny_vocabulary(), bos_token="[DEC]")
        processor = BlipProcessor(
            image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = BlipForConditionalGeneration(_tiny_blip_config(tokenizer))
        return cls(model, processor, name=TINY_NAME, max_new_tokens=TINY_MAX_NEW_TOKENS)


def _captioning_class(name: str, model_type: str) -> type:
    if model_type not in _CAPTIONING_CLASSES:
        raise InvalidInputError(
            f"Captioner '{name}' is a '{model_type}' model; supported captioners are BLIP and BLIP-2."
        )
    return _CAPTIONING_CLASSES[model_type]


def _tiny_vocabulary() -> dict[str, int]:
    """Special tokens plus plain words taken from the mediums and movements phrase banks.

    "[DEC]" is BLIP's start-of-caption token; real BLIP checkpoints add it to BERT's vocabulary.
    """
    from arpo.tools.phrase_bank import load_phrase_bank  # local: phrase banks are not needed otherwise

    banks = load_phrase_bank(("mediums", "movements"))
    phrases = [phrase for bank in banks.values() for phrase in bank]
    words = [word for phrase in phrases for word in re.findall(r"[a-z]+", phrase.lower())]
    plain_words = list(dict.fromkeys(words))[:_TINY_WORD_COUNT]
    tokens = list(_TINY_SPECIAL_TOKENS) + plain_words
    return {token: index for index, token in enumerate(tokens)}


def _tiny_blip_config(tokenizer: BertTokenizer) -> BlipConfig:
    width = 32
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": width,
        "encoder_hidden_size": width,
        "intermediate_size": 37,
        "projection_dim": width,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 64,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.sep_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision_config = {
        "hidden_size": width,
        "intermediate_size": 37,
        "projection_dim": width,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 32,
        "patch_size": 8,
    }
    return BlipConfig(
        text_config=text_config,
        vision_config=vision_config,
        projection_dim=width,
        image_text_hidden_size=width,
    )
