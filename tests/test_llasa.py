"""Llasa prompts token for token on the tiny tokenizer, speech-code extraction, and the text normaliser."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from tts.llasa import (
    CONTROL_TOKENS,
    NUM_CODES,
    SPEECH_GENERATION_END,
    SPEECH_GENERATION_START,
    TEXT_UNDERSTANDING_END,
    TEXT_UNDERSTANDING_START,
    PromptFormat,
    SpeechVocab,
    TextNormalizer,
    build_prompt_ids,
    speech_token,
)
from tts.tiny import tiny_assets


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_assets()[0])


@pytest.fixture(scope="module")
def vocab(tokenizer: Any) -> SpeechVocab:
    return SpeechVocab.from_tokenizer(tokenizer)


def _enc(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _ids(tokenizer: Any, *tokens: str) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens]


def _expected_prompt(tokenizer: Any, text: str) -> list[int]:
    """The ChatML rendering of the Llasa prompt, assembled piece by piece."""
    start, end, tus, tue, sgs = _ids(
        tokenizer,
        "<|im_start|>",
        "<|im_end|>",
        TEXT_UNDERSTANDING_START,
        TEXT_UNDERSTANDING_END,
        SPEECH_GENERATION_START,
    )
    user = [start, *_enc(tokenizer, "user\nConvert the text to speech:"), tus, *_enc(tokenizer, text), tue, end]
    return [*user, *_enc(tokenizer, "\n"), start, *_enc(tokenizer, "assistant\n"), sgs]


def test_vocab_maps_ids_and_codes(tokenizer: Any, vocab: SpeechVocab) -> None:
    assert vocab.first_id == tokenizer.convert_tokens_to_ids("<|s_0|>")
    assert vocab.first_id + 65535 == tokenizer.convert_tokens_to_ids("<|s_65535|>")
    assert vocab.stop_id == tokenizer.convert_tokens_to_ids(SPEECH_GENERATION_END)
    assert len(set(_ids(tokenizer, *CONTROL_TOKENS))) == 8
    ids = vocab.codes_to_ids([0, 17, 65535])
    assert tokenizer.convert_ids_to_tokens(ids.tolist()) == ["<|s_0|>", "<|s_17|>", "<|s_65535|>"]
    assert vocab.ids_to_codes(ids).tolist() == [0, 17, 65535]
    assert vocab.is_speech([vocab.first_id - 1, vocab.first_id, vocab.first_id + NUM_CODES]).tolist() == [
        False,
        True,
        False,
    ]
    with pytest.raises(ValueError, match=r"codes\[1\]=65536"):
        vocab.codes_to_ids([1, 65536])
    with pytest.raises(ValueError, match="not a speech token"):
        vocab.ids_to_codes([vocab.stop_id])
    assert speech_token(7) == "<|s_7|>"


def test_vocab_rejects_non_contiguous_speech_tokens() -> None:
    class Gappy:  # speech token 1000 sits elsewhere in the vocabulary
        unk_token, unk_token_id, pad_token_id = "<unk>", 0, None

        def convert_tokens_to_ids(self, t: str | list[str]) -> Any:
            one = lambda s: 5000 if s == "<|s_1000|>" else 10 + int(s[4:-2]) if s.startswith("<|s_") else 3  # noqa: E731
            return [one(s) for s in t] if isinstance(t, list) else one(t)

    with pytest.raises(ValueError, match=r"<\|s_1000\|> has id 5000, expected 1010"):
        SpeechVocab.from_tokenizer(Gappy())


def test_plain_prompt_token_for_token(tokenizer: Any) -> None:
    text = "Guten Morgen, wie geht's?"
    ids = build_prompt_ids(tokenizer, PromptFormat(), text)
    assert ids == _expected_prompt(tokenizer, text)
    assert tokenizer.decode(ids).endswith(
        f"speech:{TEXT_UNDERSTANDING_START}{text}{TEXT_UNDERSTANDING_END}<|im_end|>\n<|im_start|>assistant\n"
        f"{SPEECH_GENERATION_START}"
    )


def test_cloning_prompt_and_completion_boundary(tokenizer: Any, vocab: SpeechVocab) -> None:
    ref_codes = [5, 0, 65535, 1234]
    ids = build_prompt_ids(tokenizer, PromptFormat(), "Hello there.", ref_text="Guten Tag.", ref_codes=ref_codes)
    assert ids == _expected_prompt(tokenizer, "Guten Tag. Hello there.") + [vocab.first_id + c for c in ref_codes]
    # The same as tokenising the assistant turn with the speech-token strings (the public Llasa code's way).
    chat = [
        {"role": "user", "content": PromptFormat().user_template.format(text="Guten Tag. Hello there.")},
        {"role": "assistant", "content": SPEECH_GENERATION_START + "".join(speech_token(c) for c in ref_codes)},
    ]
    rendered = tokenizer.apply_chat_template(chat, tokenize=False, continue_final_message=True)
    assert _enc(tokenizer, rendered) == ids

    # A real model continues the prompt; the completion is only what it adds, never the reference codes.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_assets()[0]).eval()
    torch.manual_seed(0)
    out = model.generate(torch.tensor([ids]), do_sample=True, max_new_tokens=6, min_new_tokens=6, pad_token_id=0)
    assert out[0, : len(ids)].tolist() == ids
    completion = out[0, len(ids) :].tolist()
    parsed = vocab.split_completion(completion)
    assert len(completion) == 6
    assert parsed.codes.size + parsed.stray_tokens == 6 and not parsed.finished
    assert parsed.codes.tolist() == [t - vocab.first_id for t in completion if vocab.is_speech([t])[0]]


def test_prompt_errors(tokenizer: Any) -> None:
    fmt = PromptFormat()
    with pytest.raises(ValueError, match="both ref_text and ref codes"):
        build_prompt_ids(tokenizer, fmt, "Hallo", ref_text="Hi")
    with pytest.raises(ValueError, match="empty text"):
        build_prompt_ids(tokenizer, fmt, "  ")
    with pytest.raises(ValueError, match=r"token string '<\|s_3\|>'"):
        build_prompt_ids(tokenizer, fmt, "a <|s_3|> b", ref_text="x", ref_codes=[1])
    with pytest.raises(ValueError, match=r"token string '<\|s_3\|>'"):  # checked without cloning too
        build_prompt_ids(tokenizer, fmt, "a <|s_3|> b")
    with pytest.raises(ValueError, match="SPEECH_GENERATION_END"):
        build_prompt_ids(tokenizer, fmt, "a <|SPEECH_GENERATION_END|> b")
    with pytest.raises(ValueError, match="empty ref_text"):
        build_prompt_ids(tokenizer, fmt, "Hallo", ref_text="  ", ref_codes=[1])
    # text is stripped with or without cloning: the same prompt either way
    assert build_prompt_ids(tokenizer, fmt, "  Hallo \n") == build_prompt_ids(tokenizer, fmt, "Hallo")
    cloned = build_prompt_ids(tokenizer, fmt, " Hallo ", ref_text=" Guten Tag. ", ref_codes=[1])
    assert cloned == build_prompt_ids(tokenizer, fmt, "Hallo", ref_text="Guten Tag.", ref_codes=[1])
    with pytest.raises(ValueError, match=r"must contain \{text\}"):
        PromptFormat(user_template="no placeholder")


@pytest.fixture
def no_chat_template(tokenizer: Any) -> Iterator[Any]:
    saved = tokenizer.chat_template
    tokenizer.chat_template = None
    yield tokenizer
    tokenizer.chat_template = saved


def test_plain_template_without_chat_template(no_chat_template: Any) -> None:
    tok = no_chat_template
    with pytest.raises(ValueError, match=r"model\.plain_template"):
        build_prompt_ids(tok, PromptFormat(), "Hallo")
    ids = build_prompt_ids(tok, PromptFormat(plain_template="{bos}{user}"), "Hallo")
    tus, tue, sgs, bos = _ids(
        tok, TEXT_UNDERSTANDING_START, TEXT_UNDERSTANDING_END, SPEECH_GENERATION_START, "<|endoftext|>"
    )
    assert ids == [bos, *_enc(tok, "Convert the text to speech:"), tus, *_enc(tok, "Hallo"), tue, sgs]


def test_split_completion(vocab: SpeechVocab) -> None:
    s = vocab.first_id
    stray = vocab.stop_id - 1  # another control token
    finished = vocab.split_completion([s + 3, s + 9, vocab.stop_id, s + 1, s + 2])  # after the stop: ignored
    assert finished.codes.tolist() == [3, 9] and finished.finished and finished.stray_tokens == 0
    assert finished.codes.dtype == np.int64

    truncated = vocab.split_completion([s + 65535, s, s + 7])
    assert truncated.codes.tolist() == [65535, 0, 7] and not truncated.finished

    mixed = vocab.split_completion([s + 1, stray, 42, s + 2, vocab.stop_id])
    assert mixed.codes.tolist() == [1, 2] and mixed.finished and mixed.stray_tokens == 2

    generated_pad = vocab.split_completion([s + 4, vocab.pad_id])  # input is unpadded: a pad id was generated
    assert generated_pad.codes.tolist() == [4] and generated_pad.stray_tokens == 1 and not generated_pad.finished

    empty = vocab.split_completion([vocab.stop_id])
    assert empty.codes.size == 0 and empty.finished


def test_normalizer_maps_drops_and_reports() -> None:
    norm = TextNormalizer.from_texts(['Er sagte: "Hallo" - und ging weg.', "Grüß dich, 1 2 3."])
    text, changes = norm.normalize("„Grüß dich“ — sagte er…\n\tund ging § weg.")
    assert text == '"Grüß dich" - sagte er... und ging weg.'
    assert "mapped '„'->'\"' ×1" in changes and "mapped '—'->'-' ×1" in changes
    assert "dropped '§' ×1" in changes and "mapped '…'->'...' ×1" in changes
    assert norm.normalize("Hallo, ging weg.") == ("Hallo, ging weg.", [])


def test_normalizer_drops_mapped_characters_not_in_training_text() -> None:
    norm = TextNormalizer.from_texts(["hallo welt"])  # no quotes, no capitals in training
    text, changes = norm.normalize("„Hallo“ welt")
    assert text == "allo welt"
    assert changes == ["mapped '“'->'\"' ×1", "mapped '„'->'\"' ×1", "dropped '\"' ×2", "dropped 'H' ×1"]
    assert TextNormalizer().normalize("a\u00a0 b’s")[0] == "a b's"  # allowed=None keeps everything else
