"""Text normalisation applied identically to the reference and the transcript before WER/CER.

Numbers are spelled out in the clip's language (Whisper writes "8 Uhr" where the text says "acht Uhr" and vice
versa), then jiwer lower-cases, strips punctuation and collapses whitespace.
"""

from __future__ import annotations

import re

import jiwer
from num2words import num2words

_TRANSFORM = jiwer.Compose(
    [jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip()]
)
# Languages that write a decimal comma and group thousands with a point ("1.000,5"); the rest: "1,000.5".
DECIMAL_COMMA = frozenset({"de", "da", "es", "id", "it", "nl", "pt", "tr"})


def _marks(lang: str) -> tuple[str, str]:
    """(thousands separator, decimal mark) of a language code."""
    return (".", ",") if lang in DECIMAL_COMMA else (",", ".")


def spell_numbers(text: str, language: str) -> str:
    """'um 8 Uhr' → 'um acht Uhr' with num2words in the clip's language.

    Thousands separators are removed first, only in well-formed groups ("1,000,000" in English, "1.000" in
    German: one to three digits, then groups of exactly three); then only the language's decimal mark makes a
    decimal ("3.5" in English, "3,5" in German). Any other '.' or ',' is punctuation: German "8.30 Uhr" reads
    "acht dreißig Uhr".
    """
    lang = language.split("-")[0].lower()
    thousands, decimal = _marks(lang)
    grouped = re.compile(rf"(?<![\d{re.escape(thousands + decimal)}])\d{{1,3}}(?:{re.escape(thousands)}\d{{3}})+(?!\d)")
    text = grouped.sub(lambda m: m.group(0).replace(thousands, ""), text)
    number = re.compile(rf"\d+(?:{re.escape(decimal)}\d+)?")

    def words(match: re.Match[str]) -> str:
        token = match.group(0)
        try:
            value: float | int = float(token.replace(decimal, ".")) if decimal in token else int(token)
            return f" {num2words(value, lang=lang)} "
        except NotImplementedError:  # a language num2words lacks: leave the digits
            return token
        except OverflowError:  # beyond num2words (Whisper on babble wrote 564 and hundreds of zeros): digit by digit
            return " " + " ".join(num2words(int(d), lang=lang) for d in token if d.isdigit()) + " "

    return number.sub(words, text)


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
