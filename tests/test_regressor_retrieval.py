"""The target sentence space and retrieval from a prompt bank: right prompt, similarities, cache."""

from __future__ import annotations

import numpy as np
import pytest

from arpo.core.errors import InvalidInputError, ModelUnavailableError
from arpo.tools.regressor.prompt_bank import PromptBank, unique_prompts
from arpo.tools.regressor.sentence_space import HashedWordSpace, load_sentence_space

BANK = [
    "a watercolor painting of a lighthouse at dusk",
    "portrait of an old sailor, oil on canvas",
    "a red sports car on a mountain road, photograph",
    "cyberpunk city street at night, neon lights, rain",
    "a bowl of fruit on a wooden table, still life",
]


@pytest.fixture(scope="module")
def minilm():
    return load_sentence_space("minilm", device="cpu")


def test_minilm_space_is_384_dimensional_unit_length_and_semantic(minilm):
    vectors = minilm.encode(["a photo of a cat", "a picture of a kitten", "a spreadsheet of tax figures"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
    assert minilm.name == "minilm"


def test_retrieval_returns_the_prompt_of_a_known_embedding(minilm):
    bank = PromptBank.from_prompts(BANK, minilm)
    query = minilm.encode([BANK[3]])[0]
    matches = bank.top_k(query, k=3)
    assert matches[0].prompt == BANK[3]
    assert matches[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert len(matches) == 3 and matches[0].similarity > matches[1].similarity >= matches[2].similarity
    # A paraphrase finds the same prompt.
    assert bank.top_k(minilm.encode(["rainy neon-lit street in a futuristic city at night"])[0], 1)[0].prompt == BANK[3]


def test_bank_files_are_embedded_once_and_cached(tmp_path):
    bank_file = tmp_path / "bank.txt"
    bank_file.write_text("\n".join(BANK + ["", "  " + BANK[0] + "  "]) + "\n")
    loads = []

    def load_space(name):
        loads.append(name)
        return HashedWordSpace()

    first = PromptBank.from_file(bank_file, "tiny", load_space)
    second = PromptBank.from_file(bank_file, "tiny", load_space)
    assert loads == ["tiny"]  # the second bank came from the cache
    assert first.prompts == BANK and second.prompts == BANK
    np.testing.assert_allclose(first.embeddings, second.embeddings)
    assert second.top_k(HashedWordSpace().encode([BANK[2]])[0], 1)[0].prompt == BANK[2]


def test_bank_file_formats_and_errors(tmp_path):
    (tmp_path / "bank.json").write_text('["one prompt", "another prompt"]')
    (tmp_path / "bank.jsonl").write_text('{"prompt": "one prompt"}\n{"prompt": "third"}\n')
    assert PromptBank.from_file(tmp_path / "bank.json", "tiny", lambda _: HashedWordSpace()).prompts == [
        "one prompt", "another prompt",
    ]
    assert PromptBank.from_file(tmp_path / "bank.jsonl", "tiny", lambda _: HashedWordSpace()).prompts == [
        "one prompt", "third",
    ]
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(InvalidInputError, match="holds no prompts"):
        PromptBank.from_file(tmp_path / "empty.txt", "tiny", lambda _: HashedWordSpace())
    with pytest.raises(InvalidInputError, match="Cannot read"):
        PromptBank.from_file(tmp_path / "missing.txt", "tiny", lambda _: HashedWordSpace())
    bank = PromptBank.from_prompts(["x"], HashedWordSpace())
    with pytest.raises(InvalidInputError, match="dimensions"):
        bank.top_k(np.ones(5), 1)


def test_sentence_spaces_missing_here_fail_fast_with_one_line():
    with pytest.raises(ModelUnavailableError, match="paraphrase-MiniLM-L3-v2"):
        load_sentence_space("sentence-transformers/paraphrase-MiniLM-L3-v2")  # HF_HUB_OFFLINE is set


def test_tiny_space_is_deterministic_and_word_based():
    space = HashedWordSpace()
    first, again = space.encode(["a red circle", "a blue square", "a red square"]), HashedWordSpace().encode(["a red circle"])
    np.testing.assert_allclose(first[0], again[0])
    assert first[2] @ first[0] > first[1] @ first[0]
    assert unique_prompts([" a ", "a", "", "b"]) == ["a", "b"]
