"""Keeping credentials out of stored run configurations."""

import re
from collections.abc import Iterator
from typing import Any

_CAMEL_BOUNDARY = re.compile(r"([a-z0-9])([A-Z])")
_NON_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")


def secret_looking_keys(config: Any, path: str = "") -> list[str]:
    """Dotted paths of every key, at any depth, that names a credential and holds a non-empty string.

    A key names a credential when it mentions an API key, a secret or a password, or when one of its
    words ends in "token" (`hf_token`, `accessToken`). Words such as `tokenizer` or `max_tokens` do
    not count, so ordinary model settings stay storable; numbers and empty strings never count.
    """
    return list(_secret_paths(config, path))


def _secret_paths(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            item_path = f"{path}.{key}" if path else str(key)
            if isinstance(item, str) and item.strip() and names_a_credential(str(key)):
                yield item_path
            yield from _secret_paths(item, item_path)
    elif isinstance(value, (list, tuple)):
        for position, item in enumerate(value):
            yield from _secret_paths(item, f"{path}[{position}]")


def names_a_credential(key: str) -> bool:
    """Whether a configuration key name looks like it holds a credential."""
    words = _NON_ALPHANUMERIC.split(_CAMEL_BOUNDARY.sub(r"\1_\2", key).lower())
    joined = "_".join(word for word in words if word)
    if "api_key" in joined or "apikey" in joined:
        return True
    return any("secret" in word or "password" in word or word.endswith("token") for word in words)
