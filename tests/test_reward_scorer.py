"""SpeechScorer end to end on the tiny Llasa tokenizer + tiny X-Codec2 decoder + the real Whisper base."""

import json

import numpy as np
import pytest
import torch

from grpo.rollouts import Rollouts, SampleWriter, Scorer
from reward.__main__ import main as reward_cli
from reward.asr.whisper import WhisperTranscriber
from reward.config import RewardConfig, TranscriberConfig
from reward.hook import SpeechHook
from reward.scorer import SpeechScorer, score_audio
from tests import speech_fixtures as sf


class CountingTranscriber:
    """The real Whisper, counting calls: the hook must transcribe a whole step in one call."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def transcribe(self, audios, language):
        self.calls.append(len(audios))
        return self.inner.transcribe(audios, language)


@pytest.fixture(scope="module")
def whisper():
    return WhisperTranscriber(TranscriberConfig(cpu_threads=2, beam_size=1))


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoTokenizer

    from tts.codec import XCodec2Decoder
    from tts.llasa import SpeechVocab
    from tts.tiny import tiny_assets

    model_dir, codec_dir = tiny_assets()
    vocab = SpeechVocab.from_tokenizer(AutoTokenizer.from_pretrained(model_dir))
    return vocab, XCodec2Decoder.from_pretrained(codec_dir)


def _rollouts(vocab) -> Rollouts:
    rng = np.random.default_rng(0)
    codes = [
        rng.integers(0, 65536, 100),  # 2 s, finished
        np.concatenate([rng.integers(0, 65536, 30), np.tile([111, 222, 333], 15)]),  # token loop
        rng.integers(0, 65536, 80),  # cut at the budget (no stop token)
        rng.integers(0, 65536, 60),
    ]
    finished = [True, True, False, True]
    rows = [list(vocab.codes_to_ids(c)) + ([vocab.stop_id] if f else []) for c, f in zip(codes, finished, strict=True)]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    meta = tuple({"text": "Der Zug fährt um acht Uhr ab.", "language": "de"} for _ in rows)
    return Rollouts(
        prompt_ids=torch.ones(4, 3, dtype=torch.long),
        prompt_mask=torch.ones(4, 3, dtype=torch.long),
        completion_ids=ids,
        completion_mask=mask,
        group_size=2,
        finished=torch.tensor(finished),
        meta=meta,
    )


def test_one_transcription_per_step_and_terms_from_codes(tiny, whisper, tmp_path):
    vocab, decoder = tiny
    counting = CountingTranscriber(whisper)
    weights = {**RewardConfig().weights, "wer": 2.0}  # more terms/weights do not mean more transcriptions
    scorer = SpeechScorer(SpeechHook(vocab, decoder, counting), RewardConfig(weights=weights))
    assert isinstance(scorer, Scorer) and isinstance(scorer, SampleWriter)
    rollouts = _rollouts(vocab)
    scores = scorer.score(rollouts)
    assert counting.calls == [4]
    assert scores.rewards.shape == (4,) and scores.rewards.dtype == torch.float32
    terms = [d["terms"] for d in scores.details]
    assert [t["token_loop"] for t in terms] == [1.0, 0.0, 1.0, 1.0]
    assert terms[2]["complete"] == 0.0 and scores.details[2]["finished"] is False
    assert scores.details[0]["duration_s"] == pytest.approx(2.0)
    assert scores.details[1]["gated"] and scores.rewards[1] <= RewardConfig().gate_floor
    for key in ("reward/total", "reward/wer", "reward/token_loop", "asr/wer", "time/decode", "time/transcribe"):
        assert key in scores.metrics
    assert scores.metrics["reward/total"] == pytest.approx(float(scores.rewards.mean()))
    assert scores.metrics["speech/loop_rate"] == 0.25  # one of the four completions cycles
    wers = [d["wer"] for d in scores.details]
    assert scores.metrics["asr/wer_capped"] == pytest.approx(float(np.mean(np.minimum(wers, 1.0))), abs=1e-3)
    scorer.score(rollouts)
    assert counting.calls == [4, 4]
    samples = scorer.write_samples(rollouts, scores, tmp_path / "samples", limit=2)
    written = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert written == ["000.json", "000.wav", "001.json", "001.wav"]
    assert json.loads((tmp_path / "samples" / "001.json").read_text())["terms"]["token_loop"] == 0.0
    # what the trackers get: one table row per sample (each term a column) and its audio
    assert [s.fields["sample"] for s in samples] == [0, 1] and samples[1].fields["term/token_loop"] == 0.0
    assert samples[0].fields["text"] == "Der Zug fährt um acht Uhr ab." and "transcript" in samples[0].fields
    assert samples[0].sample_rate == 16000 and samples[0].audio.shape == (32000,)


def test_audio_scoring_uses_the_same_path_and_leaves_code_terms_out(whisper, tmp_path, capsys):
    sf.require_speech_tools()
    text = "The little dog likes to play in the big garden."
    clean = sf.synthesize(text, "en", tmp_path, "dog")
    counting = CountingTranscriber(whisper)
    rows = [{"text": text, "language": "en"}, {"text": text, "language": "en", "codes": [5] * 40, "finished": True}]
    out = score_audio(rows, [clean, clean], counting)
    assert counting.calls == [2]
    assert out[0]["terms"]["token_loop"] is None and out[0]["terms"]["complete"] is None
    assert out[1]["terms"]["token_loop"] == 0.0 and out[1]["terms"]["complete"] == 1.0
    assert out[0]["reward"] > 0.8 and out[1]["reward"] < out[0]["reward"]

    from tts.audio import save_audio

    save_audio(tmp_path / "dog.wav", clean, 16000)
    save_audio(tmp_path / "dog-fast.wav", sf.tempo(clean, 1.5, tmp_path, "f"), 16000)
    (tmp_path / "m.jsonl").write_text(
        "\n".join(json.dumps({"text": text, "audio": a}) for a in ("dog.wav", "dog-fast.wav")) + "\n"
    )
    (tmp_path / "c.toml").write_text("[reward]\nrate_band = [9.0, 17.0]\n[transcriber]\nbeam_size = 1\n")
    assert reward_cli(["score", "--config", str(tmp_path / "c.toml"), "--language", "en",
                       "--manifest", str(tmp_path / "m.jsonl")]) == 0  # fmt: skip
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["audio"].rsplit("/", 1)[-1] for line in lines] == ["dog.wav", "dog-fast.wav"]
    assert lines[1]["terms"]["speaking_rate"] < 1.0 == lines[0]["terms"]["speaking_rate"]
    assert lines[1]["reward"] < lines[0]["reward"]


def test_cloning_decodes_reference_and_completion_together_then_cuts(tiny, whisper):
    """As the public Llasa inference: decode(ref + completion)[320·len(ref):], not decode(completion)."""
    vocab, decoder = tiny
    rng = np.random.default_rng(1)
    ref, comp = rng.integers(0, 65536, 40), rng.integers(0, 65536, 30)
    ids = [*vocab.codes_to_ids(comp).tolist(), vocab.stop_id]
    row = {"text": "Der Zug fährt um acht Uhr ab.", "language": "de", "ref_codes": ref}
    rollouts = Rollouts(
        prompt_ids=torch.ones(2, 3, dtype=torch.long),
        prompt_mask=torch.ones(2, 3, dtype=torch.long),
        completion_ids=torch.tensor([ids, ids]),
        completion_mask=torch.ones(2, len(ids), dtype=torch.long),
        group_size=2,
        finished=torch.tensor([True, True]),
        meta=(row, {**row, "ref_codes": None}),  # the second row does not clone
    )
    with_ref, alone = SpeechHook(vocab, decoder, whisper)(rollouts)
    assert len(with_ref.audio) == len(alone.audio) == 320 * len(comp)
    joined = decoder.decode_batch([np.concatenate([ref, comp])])[0][320 * len(ref) :]
    np.testing.assert_allclose(with_ref.audio, joined, atol=1e-5)
    np.testing.assert_allclose(alone.audio, decoder.decode_batch([comp])[0], atol=1e-5)
    assert np.abs(with_ref.audio - alone.audio).max() > 0.1 * np.abs(alone.audio).max()  # the context matters
    # what is rewarded is the completion only: its ids and codes, never the reference
    assert with_ref.completion_ids == tuple(ids) and with_ref.codes.tolist() == comp.tolist()
    off = SpeechHook(vocab, decoder, whisper, decode_with_reference=False).decode([comp], [row])[0]
    np.testing.assert_allclose(off, alone.audio, atol=1e-5)
    assert SpeechHook(vocab, decoder, whisper).decode([comp[:0]], [row])[0].size == 0  # nothing generated
