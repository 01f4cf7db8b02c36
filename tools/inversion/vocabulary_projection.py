"""Hard-prompt plumbing shared by PEZ and PH2P: nearest-token projection and embedding substitution.

Both methods keep a few continuous vectors ("token slots") in a text encoder's input-embedding space
and snap them to the nearest real vocabulary tokens. To run the encoder on vectors instead of token
ids, the slots' rows of the token-embedding lookup are swapped for the vectors by a forward hook, so
the rest of the encoder (positions, attention mask, pooling at the end token) runs unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch


class VocabularyProjector:
    """Nearest vocabulary tokens of continuous vectors, by cosine similarity (as PEZ does).

    `banned_ids` (start, end and padding markers) are never chosen: a prompt is written in words.
    """

    def __init__(self, token_embedding: torch.Tensor, banned_ids: Iterable[int] = ()):
        weight = token_embedding.detach()
        self.table = weight
        banned = sorted({int(token) for token in banned_ids if 0 <= int(token) < weight.shape[0]})
        self.banned_ids = torch.tensor(banned, dtype=torch.long, device=weight.device)
        self._unit = torch.nn.functional.normalize(weight.float(), dim=-1)

    @property
    def vocab_size(self) -> int:
        return int(self.table.shape[0])

    def nearest(self, vectors: torch.Tensor) -> torch.Tensor:
        """Token id nearest to each row of `vectors` (any leading shape, last dim the width)."""
        flat = torch.nn.functional.normalize(vectors.detach().float().reshape(-1, vectors.shape[-1]), dim=-1)
        scores = flat @ self._unit.T
        if len(self.banned_ids):
            scores[:, self.banned_ids] = float("-inf")
        return scores.argmax(dim=-1).reshape(vectors.shape[:-1])

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """The vocabulary rows of `token_ids` (a copy, detached from the model)."""
        return self.table[token_ids].clone()

    def project(self, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(token ids, their embeddings) for the nearest tokens of `vectors`."""
        ids = self.nearest(vectors)
        return ids, self.embed(ids).to(vectors.dtype)

    def random_ids(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """`count` distinct-enough random usable token ids (drawn with a CPU generator for determinism)."""
        allowed = torch.ones(self.vocab_size, dtype=torch.bool)
        allowed[self.banned_ids.cpu()] = False
        pool = torch.nonzero(allowed).flatten()
        picks = torch.randint(len(pool), (count,), generator=generator)
        return pool[picks].to(self.table.device)


def slot_token_ids(
    slot_ids: torch.Tensor, *, start_id: int, end_id: int, pad_id: int, context_length: int
) -> torch.Tensor:
    """[start, slots..., end, pad...] as one row of `context_length` ids (batch dimension added)."""
    slots = slot_ids.flatten().tolist()
    if len(slots) + 2 > context_length:
        raise ValueError(f"{len(slots)} token slots do not fit a context of {context_length}")
    row = [start_id, *slots, end_id] + [pad_id] * (context_length - len(slots) - 2)
    return torch.tensor([row], dtype=torch.long, device=slot_ids.device)


@contextmanager
def substituted_slots(embedding: torch.nn.Module, vectors: torch.Tensor, first: int = 1) -> Iterator[None]:
    """While active, the lookup's output rows first..first+len(vectors) are `vectors` (gradients flow).

    `vectors` is (slots, width) for every batch row, or (batch, slots, width).
    """

    def replace(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        slots = vectors if vectors.dim() == 3 else vectors.unsqueeze(0).expand(output.shape[0], -1, -1)
        last = first + slots.shape[1]
        return torch.cat([output[:, :first], slots.to(output.dtype), output[:, last:]], dim=1)

    handle = embedding.register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


def decode_tokens(tokenizer: Any, token_ids: Sequence[int] | torch.Tensor) -> str:
    """Text of content token ids with an open_clip or transformers tokenizer, tidied to one line."""
    ids = [int(token) for token in (token_ids.flatten().tolist() if isinstance(token_ids, torch.Tensor) else token_ids)]
    wrapped = getattr(tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps a transformers one
    if hasattr(tokenizer, "decode"):
        text = tokenizer.decode(ids, **({"skip_special_tokens": True} if _is_transformers(tokenizer) else {}))
    elif wrapped is not None:
        text = wrapped.decode(ids, skip_special_tokens=True)
    else:
        raise TypeError(f"cannot decode with {type(tokenizer).__name__}")
    # Some CLIP BPE decoders leave the end-of-word marker on pieces next to undecodable bytes.
    return " ".join(text.replace("</w>", " ").split())


def undecodable_token_ids(tokenizer: Any) -> list[int]:
    """Ids of byte-level BPE tokens that are fragments of a multi-byte character.

    Such a token cannot be written down on its own (it decodes to a replacement character), so a hard
    prompt made of it would not survive being printed and read back. Tokenizers without a byte table
    (not byte-level BPE) report none.
    """
    wrapped = getattr(tokenizer, "tokenizer", None)
    source = tokenizer if hasattr(tokenizer, "byte_decoder") else wrapped
    source = source or tokenizer
    vocabulary = getattr(source, "encoder", None) or (source.get_vocab() if hasattr(source, "get_vocab") else None)
    if not vocabulary or not any(token.endswith("</w>") for token in vocabulary):
        return []  # not CLIP's byte-level BPE
    byte_decoder = getattr(source, "byte_decoder", None) or _clip_byte_decoder()
    broken = []
    for token, token_id in vocabulary.items():
        try:
            bytes(byte_decoder[char] for char in token.replace("</w>", "")).decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            broken.append(int(token_id))
    return broken


def _clip_byte_decoder() -> dict[str, int]:
    """CLIP's (GPT-2's) printable-character stand-ins for bytes, reversed; tokenizers-backed CLIP
    tokenizers do not expose the table, open_clip's tokenizer module defines it."""
    from open_clip.tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


def _is_transformers(tokenizer: Any) -> bool:
    return hasattr(tokenizer, "convert_ids_to_tokens")
