"""The speaking lab: the build's pieces are exact, the build runs end to end at toy size, and the committed
models speak (real espeak-ng speech, real Whisper base)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lab import corpus
from lab.codec import EncoderConfig, LabEncoder, fsq_digits
from lab.sft import FactorisedHead, SFTConfig, build_model
from tests import speech_fixtures
from tts.codec import XCodec2Config, XCodec2Decoder
from tts.llasa import NUM_CODES, SpeechVocab
from tts.tiny import build_tokenizer

REPO = Path(__file__).resolve().parent.parent


def test_factorised_softmax_equals_the_exported_model() -> None:
    """The SFT loss's factorised partition function is the full softmax of the saved ordinary model."""
    tok = build_tokenizer()
    vocab = SpeechVocab.from_tokenizer(tok)
    torch.manual_seed(0)
    model = build_model(tok, replace(SFTConfig(), hidden=32, layers=1, heads=2, intermediate=64)).eval()
    head = FactorisedHead(model, vocab.first_id)
    with torch.no_grad():
        head.digits.normal_(0, 0.5)  # large enough that speech tokens carry real probability mass
        head.text.normal_(0, 0.5)
    ids = torch.tensor([[5, 17, vocab.first_id + 3, vocab.first_id + 65535, vocab.stop_id, vocab.first_id + 40000]])
    with torch.no_grad():
        hidden = model.model(inputs_embeds=head.embed(ids)).last_hidden_state[0, :-1]
        factorised = head.target_logprobs(hidden, ids[0, 1:])
        head.export()
        full = torch.log_softmax(model(ids).logits[0, :-1].double(), -1).gather(-1, ids[0, 1:, None])[:, 0]
    assert torch.allclose(factorised.double(), full, atol=1e-4), (factorised, full)
    # and the exported speech rows are the digit sums the embedding used; a second phase recovers the digits
    emb = model.get_input_embeddings().weight
    assert torch.allclose(emb[ids[0, 3]], head.embed(ids)[0, 3], atol=1e-6)
    again = FactorisedHead.from_exported(model, vocab.first_id)
    assert torch.allclose(again.embed(ids), head.embed(ids), atol=1e-4)


def test_plain_prompts_have_one_voice_and_cloning_prompts_their_own() -> None:
    """Every LM sentence is spoken by the plain voice and one other; a plain example's target is the plain
    voice's codes (whichever utterance it came from), a cloning example's its own, with the speaker's shortest
    other sentences as references."""
    import numpy as np

    from lab.sft import make_examples
    from tts.llasa import PromptFormat

    utts = [u for u in corpus.plan(40, 4, 12, seed=0) if u.lm]
    voices: dict[str, list[str]] = {}
    for u in utts:
        voices.setdefault(u.text, []).append(u.speaker)
    assert len(voices) == 12
    assert all(v[0] == corpus.PLAIN_SPEAKER != v[1] for v in voices.values()), voices
    codes = {u.id: np.array([i, i + 1]) for i, u in enumerate(utts)}  # codes that tell the utterances apart
    tok = build_tokenizer()
    vocab = SpeechVocab.from_tokenizer(tok)
    plain, clone = make_examples(utts, codes, tok, vocab, PromptFormat())
    ids = {u.id: (*vocab.codes_to_ids(codes[u.id]).tolist(), vocab.stop_id) for u in utts}
    in_plain_voice = {u.text: u.id for u in utts if u.speaker == corpus.PLAIN_SPEAKER}
    for u, example in zip(utts, plain, strict=True):
        assert example.target == ids[in_plain_voice[u.text]]
        assert all(c.target == ids[u.id] for c in clone[u.id])
    other = next(u for u in utts if u.speaker != corpus.PLAIN_SPEAKER)
    refs = sorted((r for r in utts if r.speaker == other.speaker and r.text != other.text), key=lambda r: len(r.text))
    first = clone[other.id][0].prompt
    assert set(vocab.codes_to_ids(codes[refs[0].id]).tolist()) <= set(first)  # the shortest reference's codes


def test_encoder_codes_decode_on_the_decoder_grid() -> None:
    """A code written by the lab encoder is the FSQ point the decoder's index decoding reads back."""
    torch.manual_seed(0)
    enc = LabEncoder(EncoderConfig(channels=32, blocks=1), vq_dim=16, num_levels=8).eval()
    dec = XCodec2Decoder(XCodec2Config(hidden_dim=64, depth=1, heads=2, pos_meb_dim=32, vq_dim=16))
    wav = torch.randn(1, 320 * 20) * 0.1
    codes = enc.encode(wav)
    assert codes.shape == (1, 20) and 0 <= int(codes.min()) and int(codes.max()) < NUM_CODES
    digits = fsq_digits(enc(wav))
    assert torch.equal(dec.generator.quantizer.grid(codes), (digits - 2) / 2)


def test_build_runs_end_to_end_at_toy_size(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lab.build import DECODER_DONE, DECODER_LOG, TOY, build, pack_build

    speech_fixtures.require_speech_tools()
    summary = build(tmp_path / "b", TOY)
    assert set(summary["seconds"]) == {"corpus", "codec", "encode", "decoder", "sft", "sft2", "decoder2", "report"}
    # the decoder ran in a child process beside the first SFT phase: it marked its stage done, its log came back
    assert TOY.decoder_beside_sft and (tmp_path / "b" / "codec" / DECODER_DONE).is_file()
    assert summary["seconds"]["decoder"] == json.loads((tmp_path / "b" / DECODER_LOG).read_text())["seconds"] > 0
    assert (tmp_path / "b" / "codec" / "decoder2.done").is_file()  # the later decoder phase, after the LM
    assert summary["report"]["codec"]["heldout_n"] == 2 and summary["report"]["lm"]["T1.0_seen"]["n"] == 4
    again = build(tmp_path / "b", TOY, ("corpus", "codec", "encode", "sft"))  # resumable: done stages skip
    assert again["seconds"]["codec"] == summary["seconds"]["codec"]
    # the LM along the way: each phase's end and the later phases' snapshots, the last end the final model
    snaps = tmp_path / "b" / "snapshots"
    assert sorted(p.relative_to(snaps).as_posix() for p in snaps.glob("*/step-*")) == [
        "sft/step-3", "sft2/step-1", "sft2/step-2"
    ]  # fmt: skip
    final = load_file(tmp_path / "b" / "llasa" / "model.safetensors")
    assert all(torch.equal(t, final[k]) for k, t in load_file(snaps / "sft2" / "step-2" / "model.safetensors").items())
    mid = load_file(snaps / "sft2" / "step-1" / "model.safetensors")
    assert any(not torch.equal(t, final[k]) for k, t in mid.items())  # one step earlier
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "b" / "llasa")
    vocab = SpeechVocab.from_tokenizer(AutoTokenizer.from_pretrained(tmp_path / "b" / "llasa"))
    assert model.config.vocab_size == vocab.first_id + NUM_CODES
    XCodec2Decoder.from_pretrained(tmp_path / "b" / "codec")
    # --codec: a new build takes that codec as its own and skips the codec and decoder stages
    reused = build(
        tmp_path / "c", TOY, ("corpus", "codec", "encode", "decoder", "decoder2"), codec=str(tmp_path / "b" / "codec")
    )
    assert set(reused["seconds"]) == {"corpus", "encode"} and reused["codec_reused"] == str(tmp_path / "b" / "codec")
    assert (tmp_path / "c" / "codec" / "model.safetensors").read_bytes() == (
        tmp_path / "b" / "codec" / "model.safetensors"
    ).read_bytes()
    assert set(np.load(tmp_path / "c" / "codes.npz")) == set(np.load(tmp_path / "b" / "codes.npz"))
    files = pack_build(tmp_path / "b", tmp_path / "repo", llasa="snapshots/sft2/step-1", train_rows=3, heldout_rows=2)
    packed = tmp_path / "repo" / "lab" / "assets" / "llasa"
    assert (packed / "tokenizer.json.gz").is_file()
    assert load_file(packed / "model.safetensors").keys() == mid.keys()
    assert all(torch.equal(t, mid[k]) for k, t in load_file(packed / "model.safetensors").items())  # the snapshot
    assert json.loads((packed / "provenance.json").read_text())["model"] == "snapshots/sft2/step-1"
    assert len(files["train"].read_text().splitlines()) == 3
    for line in files["clone"].read_text().splitlines():
        row = json.loads(line)
        assert (files["clone"].parent / row["ref_audio"]).is_file() and row["ref_text"] != row["text"]


# ---------------------------------------------------------------------------------- the committed lab models


@pytest.fixture(scope="module")
def whisper():
    from lab.report import whisper

    return whisper(beam_size=5)


@pytest.mark.slow
def test_lab_codec_reconstructs_heldout_speech(whisper) -> None:
    """Codes from the committed encoder decode to speech Whisper base understands, on held-out sentences."""
    from lab.report import codec_wers
    from llasa_grpo import recipe

    speech_fixtures.require_speech_tools()
    folder = recipe.resolve_asset(recipe.LAB_CODEC)
    held = [u for u in corpus.plan(3000, 200, 300, seed=0) if u.split == "heldout"][:16]
    originals = [corpus.speak(u.text, corpus.SPEAKER_BY_NAME[u.speaker]) for u in held]
    wer_espeak, wer_codec = codec_wers(folder, [u.text for u in held], originals, whisper)
    print(f"held-out WER: espeak {wer_espeak:.3f}, codec reconstruction {wer_codec:.3f}")
    assert wer_codec <= 0.3


@pytest.fixture(scope="module")
def lab_system(whisper):
    from lab.report import LabSystem
    from llasa_grpo import recipe

    return LabSystem.load(recipe.resolve_asset(recipe.LAB_MODEL), recipe.resolve_asset(recipe.LAB_CODEC), whisper)


@pytest.mark.slow
def test_lab_llasa_speaks_its_training_sentences(lab_system) -> None:
    """Through the project's HF generator and reward hook, at lab.toml's sampling settings.

    Measured on the committed model (bench/lab_speak.py, the same sampler and seeds): mean WER 0.376 at this
    seed, every sample finished; over seeds 0-3 0.376 0.334 0.350 0.437, mean 0.374, the issue's bound being
    0.4 (at T 0.8 0.415, at T 0.9 0.423: it garbles a word or two in some samples, GRPO's room; README). The
    model before it (mean 0.59 over those seeds) failed this bound."""
    from lab.report import summarize
    from llasa_grpo import recipe

    cfg = recipe.load(REPO / "lab.toml")
    rows = [json.loads(line) for line in (REPO / "data" / "lab_train.jsonl").read_text().splitlines()[:8]]
    out = lab_system.speak(
        rows, temperature=cfg.generation.temperature, max_new_tokens=cfg.generation.max_new_tokens, seed=0
    )
    stats = summarize(out)
    print("lab-llasa on 8 training sentences × 2 samples:", stats)
    assert stats["wer_mean"] <= 0.4
    assert stats["finish_rate"] >= 0.9


@pytest.mark.slow
def test_lab_llasa_clones_the_reference_voice(lab_system) -> None:
    """A reference of voice A makes the speech closer to A than to the sentence's other voice, on average."""
    pytest.importorskip("resemblyzer")
    from lab.report import voice_similarity

    rows = [json.loads(line) for line in (REPO / "data" / "lab_clone.jsonl").read_text().splitlines()[:6]]
    sim_ref, sim_other = voice_similarity(lab_system, rows, REPO / "data")
    print(f"cloning: similarity to the reference voice {sim_ref:.3f}, to the other voice {sim_other:.3f}")
    assert sim_ref > sim_other
