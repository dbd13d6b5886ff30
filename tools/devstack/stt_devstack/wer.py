"""Word error rate, measured one way everywhere: `make demo`, the tests and `make bench-quality`.

Text is normalised as Whisper's own evaluations do (OpenAI's normalisers, packaged as
`whisper-normalizer`): for English, case, punctuation, spelling variants ("colour"/"color") and
numbers ("twenty one"/"21") stop counting as errors; for other languages only case, punctuation and
diacritic marks. Without that, a model that writes "Mr." or "1960" is charged for words it got right.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Protocol

import jiwer
from whisper_normalizer.basic import BasicTextNormalizer
from whisper_normalizer.english import EnglishTextNormalizer


class _Normaliser(Protocol):
    def __call__(self, s: str) -> str: ...


@cache
def _normaliser(language: str) -> _Normaliser:
    english = language.split("-")[0].lower() == "en"
    return EnglishTextNormalizer() if english else BasicTextNormalizer()  # type: ignore[no-any-return]


def normalise(text: str, language: str = "en") -> str:
    """Lower-case words separated by single spaces, as compared by `word_errors`."""
    return " ".join(_normaliser(language)(text).split())


@dataclass(frozen=True)
class WordErrors:
    """An alignment of a hypothesis against a reference, in words."""

    reference_words: int
    hits: int
    substitutions: int
    deletions: int
    insertions: int

    @property
    def wer(self) -> float:
        """(substitutions + deletions + insertions) / reference words."""
        errors = self.substitutions + self.deletions + self.insertions
        return errors / self.reference_words if self.reference_words else float(errors > 0)

    @property
    def recall(self) -> float:
        """Share of the reference's words found in order; words the hypothesis adds do not count."""
        return self.hits / self.reference_words if self.reference_words else 1.0


def word_errors(reference: str, hypothesis: str, language: str = "en") -> WordErrors:
    ref, hyp = normalise(reference, language), normalise(hypothesis, language)
    if not ref.split():
        return WordErrors(0, 0, 0, 0, len(hyp.split()))
    if not hyp.split():
        words = len(ref.split())
        return WordErrors(words, 0, 0, words, 0)
    out = jiwer.process_words(ref, hyp)
    return WordErrors(
        reference_words=out.hits + out.substitutions + out.deletions,
        hits=out.hits,
        substitutions=out.substitutions,
        deletions=out.deletions,
        insertions=out.insertions,
    )


def wer(reference: str, hypothesis: str, language: str = "en") -> float:
    return word_errors(reference, hypothesis, language).wer
