"""The Llasa prompt format and the speech-token <-> codec-code mapping.

A Llasa model is a causal LM whose vocabulary holds 8 control tokens and 65,536 speech tokens ``<|s_N|>``,
one per X-Codec2 code, added as ordinary tokens. Inference (public Llasa / Kartoffel code)::

    user:      Convert the text to speech:<|TEXT_UNDERSTANDING_START|>{text}<|TEXT_UNDERSTANDING_END|>
    assistant: <|SPEECH_GENERATION_START|>[reference speech tokens when cloning]   (continued, not closed)
    model:     <|s_…|><|s_…|>…<|SPEECH_GENERATION_END|>

For voice cloning ``text`` is the reference transcript, a space, then the target text. The completion is only
what the model adds after the prompt; the reference codes belong to the prompt.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from tts.constants import NUM_CODES

TEXT_GENERATION_START = "<|TEXT_GENERATION_START|>"
TEXT_GENERATION_END = "<|TEXT_GENERATION_END|>"
TEXT_UNDERSTANDING_START = "<|TEXT_UNDERSTANDING_START|>"
TEXT_UNDERSTANDING_END = "<|TEXT_UNDERSTANDING_END|>"
SPEECH_GENERATION_START = "<|SPEECH_GENERATION_START|>"
SPEECH_GENERATION_END = "<|SPEECH_GENERATION_END|>"
SPEECH_UNDERSTANDING_START = "<|SPEECH_UNDERSTANDING_START|>"
SPEECH_UNDERSTANDING_END = "<|SPEECH_UNDERSTANDING_END|>"
# In the order Llasa adds them to the base vocabulary (ids base+0 … base+7), before the speech tokens.
CONTROL_TOKENS = (
    TEXT_GENERATION_START,
    TEXT_GENERATION_END,
    TEXT_UNDERSTANDING_START,
    TEXT_UNDERSTANDING_END,
    SPEECH_GENERATION_START,
    SPEECH_GENERATION_END,
    SPEECH_UNDERSTANDING_START,
    SPEECH_UNDERSTANDING_END,
)
# Speech-token and control-token strings: in a text they would tokenise to those tokens.
_TOKEN_TEXT = re.compile(r"<\|s_\d+\|>|" + "|".join(re.escape(t) for t in CONTROL_TOKENS))


def speech_token(code: int) -> str:
    """The token string of codec code ``code``: ``<|s_N|>``."""
    if not 0 <= code < NUM_CODES:
        raise ValueError(f"[tts] speech code {code} is outside [0, {NUM_CODES - 1}]")
    return f"<|s_{code}|>"


@dataclass(frozen=True)
class PromptFormat:
    """Prompt strings (config ``model.*``); the defaults are Llasa's."""

    user_template: str = f"Convert the text to speech:{TEXT_UNDERSTANDING_START}{{text}}{TEXT_UNDERSTANDING_END}"
    assistant_prefix: str = SPEECH_GENERATION_START
    stop_token: str = SPEECH_GENERATION_END
    # For tokenizers without a chat template: formatted with {user} (the rendered user turn) and {bos} (the
    # tokenizer's BOS text or ""), then the assistant prefix is appended. None: a chat template is required.
    plain_template: str | None = None

    def __post_init__(self) -> None:
        if "{text}" not in self.user_template:
            raise ValueError(f"[tts] model.user_template={self.user_template!r} must contain {{text}}")
        if self.plain_template is not None and "{user}" not in self.plain_template:
            raise ValueError(f"[tts] model.plain_template={self.plain_template!r} must contain {{user}}")


@dataclass(frozen=True)
class SpeechCompletion:
    codes: np.ndarray  # int64 [n] codec codes, stray tokens removed
    finished: bool  # ended with the stop token (else it hit the length budget)
    stray_tokens: int  # non-speech tokens before the stop token (dropped)


@dataclass(frozen=True)
class SpeechVocab:
    """Token-id facts of a Llasa tokenizer: speech ids are ``first_id + code`` for code in [0, 65536)."""

    first_id: int
    stop_id: int
    pad_id: int | None
    num_codes: int = NUM_CODES

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, stop_token: str = SPEECH_GENERATION_END) -> SpeechVocab:
        tokens = [speech_token(c) for c in range(NUM_CODES)]
        if _token_id(tokenizer, tokens[0]) < 0:
            raise ValueError(f"[tts] the tokenizer has no {tokens[0]}: is it a Llasa tokenizer (model.path)?")
        ids = np.asarray([-1 if i is None else i for i in tokenizer.convert_tokens_to_ids(tokens)], dtype=np.int64)
        wrong = np.flatnonzero(ids != ids[0] + np.arange(NUM_CODES))
        if wrong.size:
            k = int(wrong[0])
            raise ValueError(
                f"[tts] speech tokens are not contiguous: {tokens[k]} has id {int(ids[k])}, expected {int(ids[0]) + k}"
            )
        stop_id = _token_id(tokenizer, stop_token)
        if stop_id < 0:
            raise ValueError(f"[tts] model.stop_token={stop_token!r} is not a token of this tokenizer")
        return cls(first_id=int(ids[0]), stop_id=stop_id, pad_id=getattr(tokenizer, "pad_token_id", None))

    def is_speech(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Boolean mask, vectorised: first_id <= id < first_id + num_codes."""
        a = np.asarray(ids, dtype=np.int64)
        return (a >= self.first_id) & (a < self.first_id + self.num_codes)

    def codes_to_ids(self, codes: Sequence[int] | np.ndarray) -> np.ndarray:
        c = np.asarray(codes, dtype=np.int64)
        bad = np.flatnonzero((c < 0) | (c >= self.num_codes))
        if bad.size:
            raise ValueError(f"[tts] codes[{int(bad[0])}]={int(c[bad[0]])} is outside [0, {self.num_codes - 1}]")
        return c + self.first_id

    def ids_to_codes(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        a = np.asarray(ids, dtype=np.int64)
        bad = np.flatnonzero(~self.is_speech(a))
        if bad.size:
            raise ValueError(f"[tts] token id {int(a[bad[0]])} at position {int(bad[0])} is not a speech token")
        return a - self.first_id

    def split_completion(self, ids: Sequence[int] | np.ndarray) -> SpeechCompletion:
        """Codes of one unpadded completion (``Rollouts.completion_lists``) up to its stop token; tokens after
        the stop token are ignored.

        Non-speech tokens before the stop (other control tokens, text) are counted as ``stray_tokens`` and
        dropped: they never reach the codec.
        """
        a = np.asarray(ids, dtype=np.int64)
        stops = np.flatnonzero(a == self.stop_id)
        finished = bool(stops.size)
        body = a[: stops[0]] if finished else a
        speech = self.is_speech(body)
        return SpeechCompletion(
            codes=self.ids_to_codes(body[speech]), finished=finished, stray_tokens=int(body.size - speech.sum())
        )


def _token_id(tokenizer: Any, token: str) -> int:
    """Id of an exact token string, or -1 (not the unknown token's id)."""
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or (tid == getattr(tokenizer, "unk_token_id", None) and token != tokenizer.unk_token):
        return -1
    return int(tid)


def build_prompt_ids(
    tokenizer: Any,
    fmt: PromptFormat,
    text: str,
    *,
    ref_text: str | None = None,
    ref_codes: Sequence[int] | np.ndarray | None = None,
    vocab: SpeechVocab | None = None,
) -> list[int]:
    """Token ids of the prompt; generation continues the assistant turn.

    Cloning (``ref_text`` and ``ref_codes`` together): the user text is ``ref_text + " " + text`` and the
    reference speech tokens follow the assistant prefix, so the completion is the continuation only.
    Speech ids are appended as ids (not re-tokenised from strings), which is equal and faster.
    """
    if (ref_text is None) != (ref_codes is None):
        raise ValueError("[tts] voice cloning needs both ref_text and ref codes (ref_audio); got only one")
    text = text.strip()
    if not text:
        raise ValueError("[tts] empty text: nothing to synthesise")
    if ref_text is not None:
        ref_text = ref_text.strip()
        if not ref_text:
            raise ValueError("[tts] empty ref_text: voice cloning needs the reference audio's transcript")
    full_text = text if ref_text is None else f"{ref_text} {text}"
    token_text = _TOKEN_TEXT.search(full_text)
    if token_text:
        raise ValueError(f"[tts] the prompt text contains the token string {token_text.group(0)!r}: {full_text[:80]!r}")
    user = fmt.user_template.format(text=full_text)
    if getattr(tokenizer, "chat_template", None):
        chat = [{"role": "user", "content": user}, {"role": "assistant", "content": fmt.assistant_prefix}]
        rendered = tokenizer.apply_chat_template(chat, tokenize=False, continue_final_message=True)
    elif fmt.plain_template is not None:
        rendered = fmt.plain_template.format(user=user, bos=tokenizer.bos_token or "") + fmt.assistant_prefix
    else:
        raise ValueError(
            "[tts] the tokenizer has no chat template: set model.plain_template (e.g. '{bos}{user}') "
            "or use a tokenizer that has one"
        )
    ids = list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    if ref_codes is not None:
        vocab = vocab or SpeechVocab.from_tokenizer(tokenizer, fmt.stop_token)
        ids.extend(vocab.codes_to_ids(ref_codes).tolist())
    return ids


# -------------------------------------------------------------------------------------- text normalisation

# Typographic characters that Whisper-made training transcripts rarely contain, mapped to plain ones.
DEFAULT_CHAR_MAP: Mapping[str, str] = MappingProxyType(
    {
        "\u201c": '"',  # “
        "\u201d": '"',  # ”
        "\u201e": '"',  # „
        "\u00ab": '"',  # «
        "\u00bb": '"',  # »
        "\u2039": "'",  # ‹
        "\u203a": "'",  # ›
        "\u2018": "'",  # ‘
        "\u2019": "'",  # ’
        "\u201a": "'",  # ‚
        "\u00b4": "'",  # ´
        "`": "'",
        "\u2013": "-",  # –
        "\u2014": "-",  # —
        "\u2012": "-",
        "\u2212": "-",  # minus
        "\u2026": "...",  # …
        "\u00a0": " ",  # no-break space
        "\u202f": " ",  # narrow no-break space
        "\u2009": " ",  # thin space
        "\t": " ",
        "\n": " ",
        "\r": " ",
        "\u00ad": "",  # soft hyphen
        "\u200b": "",  # zero-width space
    }
)


@dataclass(frozen=True)
class TextNormalizer:
    """Make prompt text look like training text: NFC, map ``char_map``, drop characters outside ``allowed``.

    ``allowed=None`` keeps every character (mapping and whitespace clean-up only). Whitespace runs collapse
    to one space. ``normalize`` returns the text and a list of human-readable changes (empty: unchanged).
    """

    allowed: frozenset[str] | None = None
    char_map: Mapping[str, str] = field(default_factory=lambda: DEFAULT_CHAR_MAP)

    @classmethod
    def from_texts(
        cls, texts: Iterable[str], *, min_count: int = 1, char_map: Mapping[str, str] = DEFAULT_CHAR_MAP
    ) -> TextNormalizer:
        """Allowed set = characters seen at least ``min_count`` times in the (mapped) training texts, plus space."""
        counts: Counter[str] = Counter()
        mapper = cls(None, char_map)
        for t in texts:
            counts.update(mapper.normalize(t)[0])
        return cls(frozenset(c for c, n in counts.items() if n >= min_count) | {" "}, char_map)

    def normalize(self, text: str) -> tuple[str, list[str]]:
        nfc = unicodedata.normalize("NFC", text)
        mapped: Counter[tuple[str, str]] = Counter()
        dropped: Counter[str] = Counter()
        out: list[str] = []
        for ch in nfc:
            rep = self.char_map.get(ch, ch)
            if rep != ch:
                mapped[(ch, rep)] += 1
            for r in rep:
                if self.allowed is None or r in self.allowed or r == " ":
                    out.append(r)
                else:
                    dropped[r] += 1
        result = " ".join("".join(out).split())
        changes = [f"mapped {a!r}->{b!r} ×{n}" for (a, b), n in sorted(mapped.items())]
        changes += [f"dropped {c!r} ×{n}" for c, n in sorted(dropped.items())]
        if result != "".join(out):
            changes.append("collapsed whitespace")
        return result, changes
