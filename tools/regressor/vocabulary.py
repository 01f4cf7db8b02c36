"""The vocabulary of the multi-label head: the m most frequent content words of the training prompts.

The paper keeps the most frequent nouns, adjectives and verbs. No English part-of-speech tagger with
its model can be installed from PyPI here (spaCy's and NLTK's taggers download their models from
elsewhere), so the vocabulary keeps the most frequent words that are not on scikit-learn's English
stop-word list. That list removes exactly the closed word classes (articles, pronouns, prepositions,
conjunctions, auxiliaries); what remains of prompts is almost entirely nouns, adjectives and verbs,
plus a few adverbs. `method` records this choice in every checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_SIZE = 1000
METHOD = "frequent-non-stopwords"
# Words of two or more letters; digits, resolutions ("8k") and punctuation are not vocabulary.
_WORD_PATTERN = r"(?u)\b[^\W\d_]{2,}\b"


@dataclass
class Vocabulary:
    """Words whose presence in a prompt the regressor learns to predict, most frequent first."""

    words: list[str]
    method: str = METHOD

    def __len__(self) -> int:
        return len(self.words)

    def labels(self, prompts: Sequence[str]) -> np.ndarray:
        """[n, m] float32: 1 where word j occurs in prompt i (case-insensitive, whole words)."""
        return self.sparse_labels(prompts).toarray()

    def sparse_labels(self, prompts: Sequence[str]):
        """The same labels as a scipy CSR matrix (a million prompts x 1000 words stays small)."""
        from scipy import sparse

        if not self.words:
            return sparse.csr_matrix((len(prompts), 0), dtype=np.float32)
        vectorizer = _vectorizer(vocabulary=self.words)
        return vectorizer.transform(list(prompts)).astype(np.float32).tocsr()

    def to_dict(self) -> dict:
        return {"words": list(self.words), "method": self.method}

    @classmethod
    def from_dict(cls, data: dict) -> "Vocabulary":
        return cls(words=list(data["words"]), method=str(data.get("method", METHOD)))

    @classmethod
    def build(cls, prompts: Sequence[str], size: int = DEFAULT_SIZE) -> "Vocabulary":
        """The `size` content words found in the most prompts (each prompt counts a word once; ties alphabetical)."""
        if size <= 0 or not prompts:
            return cls(words=[])
        vectorizer = _vectorizer(stop_words="english")
        try:
            counts = vectorizer.fit_transform(list(prompts))
        except ValueError:  # every prompt was stop words only
            return cls(words=[])
        totals = np.asarray(counts.sum(axis=0)).ravel()
        words = vectorizer.get_feature_names_out()
        order = sorted(range(len(words)), key=lambda index: (-totals[index], words[index]))
        return cls(words=[str(words[index]) for index in order[:size]])


def _vectorizer(**options):
    from sklearn.feature_extraction.text import CountVectorizer

    return CountVectorizer(lowercase=True, token_pattern=_WORD_PATTERN, binary=True, **options)
