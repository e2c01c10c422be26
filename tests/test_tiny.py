"""The offline tiny Llasa and X-Codec2 load through the same code as the real models, deterministically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tts.codec import XCodec2Decoder
from tts.constants import SAMPLES_PER_CODE
from tts.llasa import SpeechVocab
from tts.tiny import TINY_CODEC, build_tiny_codec, build_tokenizer, tiny_assets


def test_tiny_assets_load_with_the_real_loaders(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, codec_dir = tiny_assets(tmp_path)
    stamp = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert tiny_assets(tmp_path) == (model_dir, codec_dir)  # built once
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == stamp

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    assert model.config.vocab_size == len(tokenizer) == 512 + 8 + 65536
    vocab = SpeechVocab.from_tokenizer(tokenizer)
    assert vocab.first_id == 512 + 8  # base BPE, the 8 control tokens, then the speech tokens
    assert tokenizer.tokenize("<|s_12|>Hallo") == ["<|s_12|>", "H", "all", "o"]

    codec = XCodec2Decoder.from_pretrained(codec_dir)
    assert codec.config == TINY_CODEC
    wav = codec.decode(torch.tensor([[1, 2, 3]]))
    assert wav.shape == (1, 3 * SAMPLES_PER_CODE) and torch.isfinite(wav).all() and wav.std() > 0


def test_builds_are_deterministic(tmp_path: Path) -> None:
    a = build_tiny_codec(tmp_path / "a", seed=0)
    b = build_tiny_codec(tmp_path / "b", seed=0)
    c = build_tiny_codec(tmp_path / "c", seed=1)
    blob = (a / "model.safetensors").read_bytes()
    assert blob == (b / "model.safetensors").read_bytes()
    assert blob != (c / "model.safetensors").read_bytes()
    assert build_tokenizer().backend_tokenizer.to_str() == build_tokenizer().backend_tokenizer.to_str()
    d1 = XCodec2Decoder.from_pretrained(a).decode_batch([np.arange(4)])[0]
    d2 = XCodec2Decoder.from_pretrained(c).decode_batch([np.arange(4)])[0]
    assert not np.allclose(d1, d2)


def test_recipe_prompts_resolve_language_once_and_normalise_ref_text(tmp_path: Path) -> None:
    """One language rule (row, else transcriber.language) in meta; ref_text normalised like text; the
    reference codes travel in meta for the decoder; one reference clip keeps the config's rate band."""
    import json

    from transformers import AutoTokenizer

    from llasa_grpo import recipe
    from tts.audio import save_audio
    from tts.llasa import build_prompt_ids
    from tts.reference import ReferenceCodes

    save_audio(tmp_path / "ref.wav", np.sin(np.arange(32000) / 10).astype(np.float32) * 0.3)
    ReferenceCodes("HKUSTAudio/xcodec2", tmp_path / "codes", encoder=lambda p: np.arange(7)).get(tmp_path / "ref.wav")
    rows = [
        {"text": "Guten  Morgen.", "language": "de"},
        {"text": "Good morning."},
        {"text": "Und “noch” einmal.", "ref_audio": "ref.wav", "ref_text": "„Hallo“ – sagte er."},
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    cfg = recipe.load(
        "tiny.toml",
        [f"data.path={json.dumps(str(tmp_path / 'd.jsonl'))}", "transcriber.language=en", "data.allowed_chars='*'",
         f"reference.cache_dir={json.dumps(str(tmp_path / 'codes'))}"],
    )  # fmt: skip
    from tts.data import load_examples

    examples = load_examples(cfg.data.path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets()[0])
    vocab = SpeechVocab.from_tokenizer(tokenizer)
    prompts = recipe.build_prompts(cfg, examples, tokenizer, vocab)
    assert [p.meta["language"] for p in prompts] == ["de", "en", "en"]  # the row's language wins
    cloned = prompts[2]
    assert cloned.meta["ref_text"] == '"Hallo" - sagte er.' and cloned.meta["text"] == 'Und "noch" einmal.'
    assert cloned.meta["ref_codes"].tolist() == list(range(7)) and prompts[0].meta["ref_codes"] is None
    expected = build_prompt_ids(
        tokenizer, cfg.model.prompt_format(), 'Und "noch" einmal.', ref_text='"Hallo" - sagte er.',
        ref_codes=np.arange(7), vocab=vocab,
    )  # fmt: skip
    assert list(cloned.ids) == expected

    scorer = recipe.build_scorer(cfg, vocab, examples)
    assert scorer.rate_band == cfg.reward.rate_band  # one clip: percentiles would collapse to one rate
    assert scorer.hook.decode_with_reference


def test_the_recipe_builds_the_hf_generator_the_config_names() -> None:
    """generation.hf_decoder / hf_sampler_weights pick the generator: the loop (policy or bf16 weights) or
    model.generate, all with the vocabulary's end-of-speech id as the stop."""
    from transformers import AutoTokenizer

    from grpo.decode import FastHFGenerator
    from grpo.generation import HFGenerator
    from llasa_grpo import recipe
    from tests.grpo_fixtures import tiny_llama

    tokenizer = AutoTokenizer.from_pretrained(tiny_assets()[0])
    vocab = SpeechVocab.from_tokenizer(tokenizer)
    model = tiny_llama()
    built = {}
    for name, sets in {
        "loop": [],
        "bf16": ['generation.hf_sampler_weights="bfloat16"'],
        "generate": ['generation.hf_decoder="generate"'],
    }.items():
        cfg = recipe.load("tiny.toml", sets)
        built[name] = recipe.build_generator(cfg, model, vocab, 0, torch.device("cpu"))
        assert list(built[name].stop_ids) == [vocab.stop_id]
    assert type(built["generate"]) is HFGenerator
    assert isinstance(built["loop"], FastHFGenerator) and built["loop"].sampler is model
    bf16 = built["bf16"]
    assert isinstance(bf16, FastHFGenerator) and bf16.sampler is not model and bf16.return_logps
    with bf16.sampler_weights() as sampler:
        assert {p.dtype for p in sampler.parameters()} == {torch.bfloat16}
