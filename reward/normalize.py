"""Text normalisation applied identically to the reference and the transcript before WER/CER.

Numbers are spelled out in the clip's language (Whisper writes "8 Uhr" where the text says "acht Uhr" and vice
versa), then jiwer lower-cases, strips punctuation and collapses whitespace.
"""

from __future__ import annotations

import re

import jiwer
from num2words import num2words

_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_TRANSFORM = jiwer.Compose(
    [jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip()]
)


def spell_numbers(text: str, language: str) -> str:
    """'um 8 Uhr' → 'um acht Uhr' (num2words; a decimal comma or point is read as a decimal)."""
    lang = language.split("-")[0].lower()

    def words(match: re.Match[str]) -> str:
        token = match.group(0).replace(",", ".")
        try:
            value: float | int = float(token) if "." in token else int(token)
            return f" {num2words(value, lang=lang)} "
        except NotImplementedError:  # a language num2words lacks: leave the digits
            return match.group(0)

    return _NUMBER.sub(words, text)


def normalize(text: str, language: str) -> str:
    return _TRANSFORM(spell_numbers(text, language).replace("-", " "))


def error_rate(reference: str, hypothesis: str, language: str, variant: str = "wer") -> float:
    """Word (or character) error rate of ``hypothesis`` against ``reference`` after ``normalize`` on both.

    WER = (S + D + I) / N_ref; an empty hypothesis is all deletions (1.0); CER is the same over characters.
    """
    ref, hyp = normalize(reference, language), normalize(hypothesis, language)
    if not ref:
        return 0.0 if not hyp else 1.0
    if not hyp:
        return 1.0
    return float(jiwer.cer(ref, hyp) if variant == "cer" else jiwer.wer(ref, hyp))


def letters(text: str, language: str) -> int:
    """Spoken letters: alphanumerics of the normalised text (spelled-out numbers count), spaces excluded."""
    return sum(ch.isalnum() for ch in normalize(text, language))
