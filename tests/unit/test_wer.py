"""The one WER measure of the demo, the tests and the quality benchmark."""

from __future__ import annotations

from stt_devstack.wer import normalise, wer, word_errors


def test_case_punctuation_spelling_and_numbers_are_not_errors() -> None:
    reference = "Mr. Smith paid twenty-one dollars for the colour TV."
    hypothesis = "mister smith paid $21 for the color tv"
    assert normalise(reference) == normalise(hypothesis)
    assert wer(reference, hypothesis) == 0.0


def test_errors_are_counted_by_kind() -> None:
    errors = word_errors("the cat sat on the mat", "the dog sat on mat mat mat")
    assert (errors.substitutions, errors.deletions, errors.insertions) >= (1, 0, 0)
    assert errors.reference_words == 6
    assert errors.wer == (errors.substitutions + errors.deletions + errors.insertions) / 6
    assert errors.recall == errors.hits / 6 < 1


def test_an_empty_side() -> None:
    assert wer("the cat sat", "") == 1.0
    assert word_errors("the cat sat", "").deletions == 3
    assert wer("", "") == 0.0
    assert wer("", "hello") == 1.0


def test_other_languages_keep_their_letters() -> None:
    assert normalise("Привет, МИР!", "ru") == "привет мир"
    assert wer("Բարև, աշխարհ\u0589", "բարև աշխարհ", "hy") == 0.0  # ends with the Armenian full stop
    assert wer("Привет мир", "привет, мир.", "ru") == 0.0
