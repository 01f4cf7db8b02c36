"""Image captioning (BLIP / BLIP-2), the usual first prompt P0 of the ARPO loop.

Real models load by Hugging Face id or local folder; the architecture is chosen from the loaded
config's `model_type`. The real default is BLIP-2 (OPT-2.7b), so `Captioner.tiny()` builds the same
classes small and random: `Blip2ForConditionalGeneration` (tiny ViT, tiny Q-Former, tiny OPT) behind a
`Blip2Processor` with a BLIP image processor and a GPT-2 style byte-level BPE tokenizer, the kind
OPT uses. That tokenizer is trained offline from the phrase banks and cached (nothing is downloaded).
`Captioner.tiny_blip()` ("tiny-blip") keeps the small BLIP with a WordPiece tokenizer. Tiny captions
are nonsense made of real words.

A captioner is used once per run (for P0) while the generator runs on every iteration, and BLIP-2 is
about 7 GB in half precision, so the model rests on the CPU and visits its accelerator only while it
captions (under --low-vram it then stays until another model needs the room: tools/accelerator_turns.py).
"""

import hashlib
import json
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import transformers
from PIL import Image
from transformers import (
    AutoConfig,
    AutoProcessor,
    BertTokenizer,
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessor,
    BlipProcessor,
    GPT2Tokenizer,
)

from arpo.core.errors import InvalidInputError
from arpo.tools.accelerator_turns import AcceleratorTurns, Seat, Stay, turns_on
from arpo.tools.cache_paths import cache_dir, list_hash
from arpo.tools.devices import dtype_name, pick_device, pick_dtype
from arpo.tools.hub import load_or_fail

DEFAULT_CAPTIONER = "Salesforce/blip2-opt-2.7b"
# Returned when a model decodes to nothing (only special tokens): the loop needs some starting text,
# and a neutral one lets the later rounds add all of the content.
FALLBACK_CAPTION = "an image"
DEFAULT_MAX_NEW_TOKENS = 30
TINY_NAME = "tiny"  # tiny BLIP-2, like the real default
TINY_BLIP_NAME = "tiny-blip"
TINY_MAX_NEW_TOKENS = 8
CPU = torch.device("cpu")
REMEMBERED_CAPTIONS = 256
"""Captions a captioner keeps per image content (a few hundred short strings)."""

# model_type in the checkpoint's config -> the generation class that reads it.
_CAPTIONING_CLASSES = {
    "blip-2": Blip2ForConditionalGeneration,
    "blip": BlipForConditionalGeneration,
}
_TINY_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")
_TINY_WORD_COUNT = 300
# OPT's special tokens and their ids (0-3), in OPT's order; OPT starts every text with "</s>".
_OPT_SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")
_TINY_BPE_VOCAB_SIZE = 1000
_TINY_QUERY_TOKENS = 4  # the real BLIP-2 uses 32 learned queries
_TINY_IMAGE_SIZE = 32
_TINY_WIDTH = 32

_tokenizer_lock = threading.Lock()


class Captioner:
    """Captions one image at a time; thread-safe (generation is serialised by a lock).

    `device` is where captions are computed. When it is not the CPU, the model waits on the CPU and
    moves to `device` only for the length of one `caption` call, so it never holds accelerator memory
    the generator and the optimisers need. `low_vram`: it waits on the CPU whatever the device, and
    after a caption stays on the device until another model's turn needs it (`turns`: by default the
    device's own).

    Captions are remembered by image content (decoding is deterministic), so every method and run of
    a process that asks about the same image pays for one generation: `calls` counts generations,
    `reused_captions` the answers given from memory.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        *,
        name: str,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        revision: str | None = None,
        device: torch.device | str | None = None,
        low_vram: bool = False,
        turns: AcceleratorTurns | None = None,
    ):
        self.name = name
        self.device = torch.device(device) if device is not None else _parameter_device(model)
        self.turns = turns or turns_on(self.device)
        self._seat = Seat.for_module("captioner", model, stay=_stay(self.device, low_vram))
        self.model = model.eval().to(CPU) if self.offloads else model.eval().to(self.device)
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        self.revision = revision
        self.calls = 0
        self.reused_captions = 0
        self.forward_seconds = 0.0
        self._lock = threading.Lock()
        self._remembered: OrderedDict[str, str] = OrderedDict()

    @property
    def offloads(self) -> bool:
        """True when the model rests on the CPU between captions (its device is an accelerator, or
        --low-vram asked for it)."""
        return self._seat.stay is not Stay.RESIDENT

    def caption(self, image: Image.Image, *, name: str | None = None) -> str:
        """A short description of `image`; never empty (falls back to "an image").

        `name`: a name the caller already has for exactly these RGB pixels (the image store's hash),
        under which the caption is remembered without hashing the pixels (a photo's take about 0.4 ms).
        """
        key = self._named_key(name) if name is not None else None
        with self._lock:
            remembered = self._recall(key) if key is not None else None
        if remembered is not None:
            return remembered  # without a turn, a conversion or a hash: a remembered caption costs nothing
        rgb = image.convert("RGB")
        key = key or self._memory_key(rgb)
        with self._lock:
            remembered = self._recall(key)
        if remembered is not None:
            return remembered  # without a turn: a remembered caption moves no model
        # The turn before the lock, as every model takes them, so two locks are never taken in two orders.
        with self.turns.turn(self._seat), self._lock:
            remembered = self._recall(key)  # another thread may have made it while this one waited
            if remembered is not None:
                return remembered
            inputs = self.processor(images=rgb, return_tensors="pt")
            started = time.perf_counter()
            generated = self._generate(inputs)
            self.forward_seconds += time.perf_counter() - started
            self.calls += 1
            text = self.processor.batch_decode(generated.cpu(), skip_special_tokens=True)[0]
            caption = " ".join(text.split()) or FALLBACK_CAPTION
            self._remembered[key] = caption
            if len(self._remembered) > REMEMBERED_CAPTIONS:
                self._remembered.popitem(last=False)
        return caption

    def _recall(self, key: str) -> str | None:
        if key not in self._remembered:
            return None
        self._remembered.move_to_end(key)
        self.reused_captions += 1
        return self._remembered[key]

    def _named_key(self, name: str) -> str:
        return f"named {name};{self.max_new_tokens}"

    def _memory_key(self, rgb: Image.Image) -> str:
        """The pixels and the generation length: what decides the caption of a given model."""
        digest = hashlib.sha256(f"{rgb.size}:{self.max_new_tokens};".encode())
        digest.update(rgb.tobytes())
        return digest.hexdigest()

    def _generate(self, inputs: Any) -> torch.Tensor:
        device = _parameter_device(self.model)
        inputs = {key: value.to(device) for key, value in inputs.items()}
        # Pixels must match the model's dtype (float16 on CUDA, bfloat16 if asked); token ids stay integers.
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            return self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)

    def describe(self) -> dict[str, Any]:
        """Which captioner this is, as plain JSON values, for the run record."""
        return {
            "model": self.name,
            "revision": self.revision,
            "architecture": type(self.model).__name__,
            "max_new_tokens": self.max_new_tokens,
            "dtype": dtype_name(self.model.dtype),
            "device": str(self.device),
            "rests_on_cpu": self.offloads,
            "low_vram": self._seat.stay is Stay.UNTIL_NEEDED,
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
        low_vram: bool = False,
        turns: AcceleratorTurns | None = None,
    ) -> "Captioner":
        """Load a BLIP or BLIP-2 captioner by Hugging Face id or local folder.

        Only cached weights are used unless the hub is allowed (no HF_HUB_OFFLINE) and reachable;
        otherwise ModelUnavailableError is raised at once. The tiny names ("tiny", "tiny-blip") build
        the tiny models, so every place that loads a captioner by name can ask for either.
        """
        torch_device = pick_device(device)
        torch_dtype = dtype or pick_dtype(torch_device)
        if name in (TINY_NAME, TINY_BLIP_NAME):
            build = cls.tiny if name == TINY_NAME else cls.tiny_blip
            return build(device=torch_device, dtype=torch_dtype, low_vram=low_vram, turns=turns)

        def load(local_files_only: bool) -> tuple[torch.nn.Module, Any, str | None]:
            config = AutoConfig.from_pretrained(name, local_files_only=local_files_only)
            model_class = _captioning_class(name, config.model_type)
            model = model_class.from_pretrained(name, dtype=torch_dtype, local_files_only=local_files_only)
            processor = AutoProcessor.from_pretrained(name, local_files_only=local_files_only)
            return model, processor, getattr(config, "_commit_hash", None)

        model, processor, revision = load_or_fail(name, load)
        return cls(
            model, processor, name=name, max_new_tokens=max_new_tokens, revision=revision, device=torch_device,
            low_vram=low_vram, turns=turns,
        )

    @classmethod
    def tiny(
        cls, seed: int = 0, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
        low_vram: bool = False, turns: AcceleratorTurns | None = None,
    ) -> "Captioner":
        """A small random BLIP-2 (32-pixel images, width-32 ViT, Q-Former and OPT, 4 queries) with a
        byte-level BPE vocabulary of about a thousand tokens.

        The same `seed` always builds the same weights, so its (meaningless) captions are repeatable.
        `device` and `dtype` default to the CPU in float32 (or `turns`' device, a CPU device of its
        own in tests).
        """
        tokenizer = tiny_opt_tokenizer()
        processor = Blip2Processor(
            image_processor=_tiny_image_processor(), tokenizer=tokenizer, num_query_tokens=_TINY_QUERY_TOKENS
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Blip2ForConditionalGeneration(_tiny_blip2_config(tokenizer))
        _speak_in_whole_words(model, tokenizer)
        model.to(dtype or torch.float32)
        return cls(
            model, processor, name=TINY_NAME, max_new_tokens=TINY_MAX_NEW_TOKENS,
            device=device or _turns_device(turns), low_vram=low_vram, turns=turns,
        )

    @classmethod
    def tiny_blip(
        cls, seed: int = 0, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
        low_vram: bool = False, turns: AcceleratorTurns | None = None,
    ) -> "Captioner":
        """A small random BLIP (32-pixel images, width-32 towers) with a few-hundred-word WordPiece
        vocabulary: the tiny version of the BLIP captioners."""
        tokenizer = BertTokenizer(vocab=_tiny_vocabulary(), bos_token="[DEC]")
        processor = BlipProcessor(image_processor=_tiny_image_processor(), tokenizer=tokenizer)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = BlipForConditionalGeneration(_tiny_blip_config(tokenizer))
        model.to(dtype or torch.float32)
        return cls(
            model, processor, name=TINY_BLIP_NAME, max_new_tokens=TINY_MAX_NEW_TOKENS,
            device=device or _turns_device(turns), low_vram=low_vram, turns=turns,
        )


def tiny_opt_tokenizer() -> GPT2Tokenizer:
    """A GPT-2 style byte-level BPE tokenizer laid out like OPT's (the language model of BLIP-2).

    OPT's own vocabulary cannot be downloaded here, so a small one is trained from the mediums and
    movements phrase banks with the `tokenizers` library (deterministic for the same phrases) and its
    vocab.json / merges.txt are written once under $ARPO_HOME/cache/opt-tokenizer, named by the
    phrases' digest. Ids 0-3 are OPT's <s>, <pad>, </s>, <unk>; "</s>" opens and closes texts as it
    does in OPT; Blip2Processor adds its "<image>" placeholder token on top.
    """
    phrases = _tiny_phrases()
    folder = cache_dir("opt-tokenizer") / f"bpe{_TINY_BPE_VOCAB_SIZE}-{list_hash(phrases)}"
    with _tokenizer_lock:
        if not ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()):
            _write_byte_level_bpe(folder, phrases)
    return GPT2Tokenizer.from_pretrained(
        str(folder),
        bos_token="</s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        add_bos_token=True,
    )


def _write_byte_level_bpe(folder: Path, phrases: list[str]) -> None:
    from tokenizers import ByteLevelBPETokenizer  # local: only the tiny captioner trains a tokenizer

    from arpo.tools.clip_tokenizer import write_bpe_files

    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(
        phrases,
        vocab_size=_TINY_BPE_VOCAB_SIZE,
        min_frequency=1,
        special_tokens=list(_OPT_SPECIAL_TOKENS),
        show_progress=False,
    )
    model = json.loads(trainer.to_str())["model"]
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model["merges"]]
    write_bpe_files(folder, model["vocab"], merges)


def _parameter_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _stay(device: torch.device, low_vram: bool) -> Stay:
    """Under --low-vram the captioner waits its turn like every model; otherwise it lives on a CPU
    device and only visits an accelerator."""
    if low_vram:
        return Stay.UNTIL_NEEDED
    return Stay.RESIDENT if device.type == "cpu" else Stay.FOR_TURN


def _turns_device(turns: AcceleratorTurns | None) -> torch.device:
    return turns.device if turns is not None else CPU


def _tiny_image_processor() -> BlipImageProcessor:
    return BlipImageProcessor(size={"height": _TINY_IMAGE_SIZE, "width": _TINY_IMAGE_SIZE})


def _captioning_class(name: str, model_type: str) -> type:
    if model_type not in _CAPTIONING_CLASSES:
        raise InvalidInputError(
            f"Captioner '{name}' is a '{model_type}' model; supported captioners are BLIP and BLIP-2."
        )
    return _CAPTIONING_CLASSES[model_type]


def _tiny_phrases() -> list[str]:
    """The mediums and movements phrase banks, the text both tiny vocabularies are made from."""
    from arpo.tools.phrase_bank import load_phrase_bank  # local: phrase banks are not needed otherwise

    banks = load_phrase_bank(("mediums", "movements"))
    return [phrase for bank in banks.values() for phrase in bank]


def _tiny_words() -> set[str]:
    """Plain words (two letters or more) of the phrases the tiny vocabularies are made from."""
    return {word for phrase in _tiny_phrases() for word in re.findall(r"[a-z]{2,}", phrase.lower())}


def _speak_in_whole_words(model: Blip2ForConditionalGeneration, tokenizer: GPT2Tokenizer) -> None:
    """Zero the output rows of every token except space-led whole words and "</s>".

    A random OPT head would emit raw bytes and word pieces (unreadable, even invalid UTF-8). With those
    rows at zero their logits are exactly 0 while about 150 word rows get random logits, so greedy
    decoding picks a word (all 150 falling below zero has odds of 2^-150) and the caption reads as
    space-separated phrase-bank words. It changes weights, not decoding, so a saved tiny model
    captions the same after loading.
    """
    words = _tiny_words()
    speakable = {
        token_id
        for token, token_id in tokenizer.get_vocab().items()
        if token.startswith("Ġ") and token[1:] in words  # "Ġ" is the byte-level BPE's mark for a space
    }
    speakable.add(tokenizer.eos_token_id)
    head = model.get_output_embeddings().weight
    silenced = torch.ones(head.shape[0], dtype=torch.bool)
    silenced[sorted(speakable)] = False
    with torch.no_grad():
        head[silenced] = 0.0


def _tiny_vocabulary() -> dict[str, int]:
    """Special tokens plus plain words taken from the mediums and movements phrase banks.

    "[DEC]" is BLIP's start-of-caption token; real BLIP checkpoints add it to BERT's vocabulary.
    """
    words = [word for phrase in _tiny_phrases() for word in re.findall(r"[a-z]+", phrase.lower())]
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


def _tiny_blip2_config(tokenizer: GPT2Tokenizer) -> Blip2Config:
    """BLIP-2 OPT's layout at width 32: ViT patches -> Q-Former queries -> projection -> OPT decoder.

    The "<image>" placeholder ids mark where the projected queries go, as in the real checkpoints.
    Unlike OPT, the output head is not tied to the input embeddings: a random tied head feeds each
    token back as its own best successor, so every tiny caption would be one token repeated.
    """
    width = _TINY_WIDTH
    vision_config = {
        "hidden_size": width,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": _TINY_IMAGE_SIZE,
        "patch_size": 8,
    }
    qformer_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": width,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 64,
        "cross_attention_frequency": 1,
        "encoder_hidden_size": width,
    }
    text_config = {
        "model_type": "opt",
        "vocab_size": len(tokenizer),
        "hidden_size": width,
        "word_embed_proj_dim": width,
        "ffn_dim": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 64,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }
    return Blip2Config(
        vision_config=vision_config,
        qformer_config=qformer_config,
        text_config=text_config,
        num_query_tokens=_TINY_QUERY_TOKENS,
        image_text_hidden_size=width,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=False,
    )
