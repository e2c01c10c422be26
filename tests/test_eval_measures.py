"""The measures papers report, on real audio: DNSMOS (speechmos' ONNX models), speaker similarity with
resemblyzer (its real weights) and with a WavLM x-vector model loaded through ``from_pretrained`` (a tiny random
one saved to a folder), the Seed-TTS-eval normalisation, and how ``--protocol seedtts`` resolves offline."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from evaluation.protocol import SEEDTTS_ASR, resolve
from evaluation.report import error_rates, seedtts_normalize
from reward.asr.transcript import Transcript
from reward.config import RewardConfig, TranscriberConfig
from reward.rollout import SpeechRollout, StepContext
from reward.speaker import RESEMBLYZER, WAVLM_SV
from reward.terms import get_term, resolve_terms, rollout_dnsmos
from tests.speech_fixtures import require_speech_tools, synthesize
from tts.constants import SAMPLE_RATE

SENTENCE = "The sun is shining over the old harbour today."


def rollout(audio: np.ndarray, ref_audio: str | None = None, transcript: str = SENTENCE) -> SpeechRollout:
    return SpeechRollout(
        text=SENTENCE,
        language="en",
        audio=audio,
        duration_s=len(audio) / SAMPLE_RATE,
        transcript=Transcript(transcript, silent=not transcript),
        ref_text="a reference" if ref_audio else None,
        ref_audio=ref_audio,
    )


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    require_speech_tools()
    return synthesize(SENTENCE, "en", tmp_path_factory.mktemp("speech"), "clean")


def say(text: str, voice: str, directory: Path, name: str) -> Path:
    """espeak-ng in one of its voice variants (another speaker), as a 16 kHz WAV file."""
    raw, out = directory / f"{name}.raw.wav", directory / f"{name}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True, capture_output=True)
    subprocess.run(["sox", "-R", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(out)], check=True)
    return out


# ---------------------------------------------------------------------------------------------------------- DNSMOS


def test_dnsmos_rates_clean_speech_above_noise_and_corrupted_speech(speech: np.ndarray) -> None:
    """One 9 s DNSMOS window costs ~1.2 s of one CPU core: five clips here."""
    pytest.importorskip("speechmos")
    from reward.dnsmos import dnsmos

    rng = np.random.default_rng(0)
    noise = (0.1 * rng.standard_normal(len(speech))).astype(np.float32)
    noisy = speech + (0.05 * rng.standard_normal(len(speech))).astype(np.float32)  # ~10 dB SNR
    clipped = np.clip(8 * speech, -0.3, 0.3) * 3  # overdriven: hard clipping distorts the voice
    clean, scores = dnsmos(speech), {n: dnsmos(a) for n, a in (("noise", noise), ("noisy", noisy), ("clip", clipped))}
    print(f"DNSMOS clean {clean}, " + ", ".join(f"{n} {s}" for n, s in scores.items()))
    assert clean is not None and all(s is not None for s in scores.values())
    for s in (clean, *scores.values()):
        assert 1.0 <= min(s.sig, s.bak, s.ovrl) and max(s.sig, s.bak, s.ovrl) <= 5.0
    assert all(clean.ovrl > s.ovrl + 0.5 for s in scores.values())
    assert clean.bak > scores["noisy"].bak + 1.0  # the noise is heard in the background score
    assert clean.sig > scores["clip"].sig and clean.sig > scores["noise"].sig + 1.0
    assert dnsmos(np.zeros(0, np.float32)) is None  # speechmos itself would loop forever on an empty clip
    loud = dnsmos(4 * speech)  # out of [-1, 1]: clipped to it, not refused
    assert loud is not None and loud.sig < clean.sig


def test_dnsmos_term_is_off_by_default_and_computed_once(speech: np.ndarray) -> None:
    pytest.importorskip("speechmos")
    assert "dnsmos" not in resolve_terms(RewardConfig())
    assert "dnsmos" not in resolve_terms(RewardConfig(weights={"wer": 1.0, "dnsmos": 0.0}))
    cfg = RewardConfig(weights={"wer": 1.0, "dnsmos": 0.5})
    assert "dnsmos" in resolve_terms(cfg)
    term, ctx = get_term("dnsmos"), StepContext(cfg)
    r = rollout(speech)
    value = term(r, ctx)
    assert value == pytest.approx((rollout_dnsmos(r).ovrl - 1) / 4) and 0.3 < value <= 1.0
    assert rollout_dnsmos(r) is rollout_dnsmos(r)  # one measurement per rollout, shared with evaluate.py
    noise = np.random.default_rng(1).standard_normal(len(speech)).astype(np.float32) * 0.1
    assert term(rollout(noise), ctx) < value - 0.1
    assert term(rollout(speech, transcript=""), ctx) == 0.0  # judged silent: no quality to reward


# ------------------------------------------------------------------------------------------------ speaker models


def test_resemblyzer_is_the_offline_default_and_tells_voices_apart(tmp_path: Path, speech: np.ndarray) -> None:
    pytest.importorskip("resemblyzer")
    from reward.speaker import similarity

    assert RewardConfig().speaker_model == RESEMBLYZER
    ref = say("My sister has lived in Boston for two years.", "en-us", tmp_path, "same")
    other = say("My sister has lived in Boston for two years.", "en-us+f3", tmp_path, "other")
    same_voice, other_voice = similarity(str(ref), speech), similarity(str(other), speech)
    print(f"resemblyzer: same espeak voice {same_voice:.3f}, another voice {other_voice:.3f}")
    assert same_voice > other_voice + 0.1
    term = get_term("speaker_similarity")
    assert term(rollout(speech, str(ref)), StepContext()) == pytest.approx(max(0.0, same_voice))


def tiny_wavlm(folder: Path):
    """A random 2-layer WavLMForXVector and its feature extractor, saved as a hub model folder (safetensors)."""
    import torch
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    config = WavLMConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16),
        conv_stride=(5, 8),
        conv_kernel=(10, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        num_buckets=32,
        max_bucket_distance=80,
        tdnn_dim=(16, 16),
        tdnn_kernel=(3, 1),
        tdnn_dilation=(1, 1),
        xvector_output_dim=8,
    )
    torch.manual_seed(0)
    model = WavLMForXVector(config).eval()
    model.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(sampling_rate=SAMPLE_RATE, do_normalize=True, return_attention_mask=True).save_pretrained(
        folder
    )
    assert (folder / "model.safetensors").is_file()
    return model


def test_wavlm_speaker_model_loads_through_from_pretrained(tmp_path: Path, speech: np.ndarray) -> None:
    import torch

    from reward.speaker import WavLMEncoder, embed_wav, encoder, similarity

    speech = speech[: SAMPLE_RATE * 3 // 2]  # 1.5 s: 600 frames for the tiny model's attention
    folder = tmp_path / "wavlm-sv"
    model = tiny_wavlm(folder)
    enc = encoder(str(folder))
    assert isinstance(enc, WavLMEncoder)
    # the folder's weights, not a fresh initialisation: the x-vector equals the saved model's on normalised input
    with torch.no_grad():
        x = torch.from_numpy((speech - speech.mean()) / np.sqrt(speech.var() + 1e-7))[None]
        expected = model(x).embeddings[0].numpy()
    got = embed_wav(speech, str(folder))
    assert got.shape == (8,) and np.allclose(got, expected, atol=1e-5)
    ref = tmp_path / "ref.wav"
    sf.write(ref, speech, SAMPLE_RATE, subtype="FLOAT")
    assert similarity(str(ref), speech, str(folder)) == pytest.approx(1.0, abs=1e-5)
    noise = np.random.default_rng(0).standard_normal(len(speech)).astype(np.float32) * 0.1
    cos = similarity(str(ref), noise, str(folder))
    assert -1.0 <= cos < 0.999
    cfg = RewardConfig(weights={"speaker_similarity": 1.0}, speaker_model=str(folder))
    assert get_term("speaker_similarity")(rollout(noise, str(ref)), StepContext(cfg)) == pytest.approx(max(0, cos))


def test_a_missing_speaker_model_is_named(tmp_path: Path) -> None:
    from reward.speaker import WavLMEncoder

    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"speaker_model='.*empty'.*WavLMForXVector.*'resemblyzer'"):
        WavLMEncoder(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="speaker_model"):
        RewardConfig(speaker_model=" ")


# ------------------------------------------------------------------------------------------ Seed-TTS-eval protocol


def test_seedtts_normalisation_follows_run_wer() -> None:
    pytest.importorskip("zhon")
    assert seedtts_normalize("Hello, World!  It's 8 o'clock.", "en") == "hello world it's 8 o'clock"
    assert seedtts_normalize("Well-known", "en") == "wellknown"  # punctuation is deleted, not replaced by a space
    assert seedtts_normalize("你好，世界！ OK", "zh") == "你 好 世 界 O K"  # Chinese WER counts characters
    assert error_rates("你好世界", "你好世间", "zh", "seedtts") == (0.25, 0.25)
    assert error_rates("身体很好。", "身體很好", "zh", "seedtts") == (0.0, 0.0)  # zhconv: traditional → simplified
    assert error_rates("Meet me at 8.", "meet me at eight", "en", "seedtts")[0] == pytest.approx(0.25)


def _lookups(problem: str | None):
    asked: list[tuple[str, str]] = []

    def available(key: str, name: str, probe: str, repo: str) -> str | None:
        asked.append((key, name))
        return problem

    return available, asked


def test_seedtts_protocol_offline_falls_back_with_caveats() -> None:
    available, asked = _lookups("not cached and the hub is unreachable")
    choice = resolve(
        "seedtts",
        transcriber=TranscriberConfig(model="whisper-base-pypi", beam_size=5),
        config_speaker_model=RESEMBLYZER,
        languages={"en", "de"},
        has_references=True,
        available=available,
    )
    assert asked == [("transcriber.model", SEEDTTS_ASR), ("--sim-model", WAVLM_SV)]
    assert choice.transcriber == {} and choice.normalization == "seedtts" and choice.speaker_model == RESEMBLYZER
    text = "\n".join(choice.caveats)
    assert "Whisper-large-v3 is not available (not cached" in text and "'whisper-base-pypi' (beam 5)" in text
    assert "the de rows follow its English rule" in text
    assert f"{WAVLM_SV} is not available either" in text and "cosine of 'resemblyzer' embeddings" in text
    assert "Paraformer" not in text  # no Chinese rows


def test_seedtts_protocol_uses_its_models_where_available() -> None:
    available, asked = _lookups(None)
    choice = resolve(
        "seedtts",
        transcriber=TranscriberConfig(),
        config_speaker_model=RESEMBLYZER,
        languages={"en", "zh"},
        has_references=True,
        available=available,
    )
    assert choice.transcriber == {"model": SEEDTTS_ASR, "beam_size": 1, "compute_type": "float32"}
    assert choice.speaker_model == WAVLM_SV
    # what no setting can meet stays a caveat: Paraformer for Chinese, the ECAPA-TDNN SIM head
    assert [c.split(":")[0] for c in choice.caveats] == ["ASR", "SIM"]
    assert "Paraformer-zh" in choice.caveats[0] and "ECAPA-TDNN" in choice.caveats[1]
    # explicit choices win; a --sim-model is not looked up, a --set transcriber.model is kept and named
    available, asked = _lookups(None)
    mine = resolve(
        "seedtts",
        transcriber=TranscriberConfig(model="/models/whisper"),
        config_speaker_model=RESEMBLYZER,
        speaker_model="/models/wavlm-sv",
        normalization="project",
        transcriber_set=True,
        languages={"en"},
        has_references=True,
        available=available,
    )
    assert asked == [] and mine.transcriber == {} and mine.speaker_model == "/models/wavlm-sv"
    assert mine.normalization == "project"
    assert any("'/models/whisper'" in c and "by --set" in c for c in mine.caveats)
    assert any("--normalization project replaces" in c for c in mine.caveats)
    project = resolve("project", transcriber=TranscriberConfig(), config_speaker_model=RESEMBLYZER, available=available)
    assert (project.normalization, project.speaker_model, project.caveats, project.transcriber) == (
        "project",
        RESEMBLYZER,
        [],
        {},
    )


# ----------------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_evaluate_seedtts_protocol_with_dnsmos_and_a_wavlm_sim_model(
    tmp_path: Path, speech: np.ndarray, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """evaluate.py --protocol seedtts --dnsmos --sim-model DIR offline: the caveats are printed and in the report,
    the per-clip DNSMOS and SIM are in samples.jsonl, and the report's means are theirs."""
    import json

    from huggingface_hub import constants as hub_constants

    import evaluate
    from reward.speaker import similarity

    pytest.importorskip("speechmos")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # large-v3 and the WavLM id: offline
    sf.write(tmp_path / "ref.wav", speech, SAMPLE_RATE, subtype="PCM_16")
    row = {"text": "Good morning.", "language": "en", "ref_audio": "ref.wav", "ref_text": SENTENCE}
    (tmp_path / "data.jsonl").write_text(json.dumps(row) + "\n")
    tiny_wavlm(tmp_path / "wavlm")
    out = tmp_path / "out"
    argv = [
        "--config", "tiny.toml", "--checkpoints", "base=tiny-llasa", "--data", str(tmp_path / "data.jsonl"),
        "--samples", "2", "--set", "generation.max_new_tokens=40", "--set", 'reference.codec="lab-xcodec2"',
        "--protocol", "seedtts", "--dnsmos", "--sim-model", str(tmp_path / "wavlm"), "--bootstrap", "50",
        "--out", str(out),
    ]  # fmt: skip
    assert evaluate.main(argv) == 0
    printed = capsys.readouterr().out
    report = (out / "report.md").read_text()
    assert "caveat: ASR: Seed-TTS-eval's Whisper-large-v3 is not available" in printed
    assert "**Caveats:**" in report and "transcriber.model='whisper-base-pypi' (beam 1), as configured" in report
    assert "ECAPA-TDNN" in report and "- normalization: seedtts" in report
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    metrics = json.loads((out / "metrics.json").read_text())["overall"]["base"]
    assert len(rows) == 2
    for r in rows:
        assert all(1.0 <= r[k] <= 5.0 for k in ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl"))
        wav, _ = sf.read(out / r["audio"], dtype="float32")
        expected = 0.0 if r["empty"] else similarity(str(tmp_path / "ref.wav"), wav, str(tmp_path / "wavlm"))
        assert r["speaker_similarity"] == pytest.approx(expected, abs=1e-3)  # the WAV is 16-bit: near, not equal
    for k in ("dnsmos_ovrl", "speaker_similarity"):
        assert metrics[k]["mean"] == pytest.approx(np.mean([r[k] for r in rows])) and metrics[k]["n"] == 2
    assert "DNSMOS overall (OVRL, 1–5)" in report and "speaker similarity (SIM, cosine)" in report
