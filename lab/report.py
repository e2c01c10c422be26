"""Measurements of a lab build, through the project's own generator, hook and the real Whisper base.

``measure`` (the build's last stage; also ``bench/lab.py``) reports: the codec's reconstruction WER against the
espeak-ng originals on held-out sentences, codes in use and their entropy, the LM's WER / finish rate / loop
rate / duration ratio by temperature on seen (training) and unseen (held-out) sentences, and cloning: the
resemblyzer similarity of cloned speech to the reference voice vs to the sentence's other voice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reward.normalize import error_rate
from reward.terms import longest_code_cycle
from tts.constants import CODES_PER_SECOND

LOOP_MAX_PERIOD, LOOP_MIN_S = 8, 1.0  # the definition: codes cycling with period ≤ 8 for ≥ 1 s


def whisper(beam_size: int = 1, threads: int = 2, window_s: float = 30.0) -> Any:
    """Whisper base (``window_s`` 10 is how lab.toml's reward runs it: the lab's clips are at most 8 s)."""
    from reward.asr.whisper import WhisperTranscriber
    from reward.config import TranscriberConfig

    cfg = TranscriberConfig(model="whisper-base-pypi", beam_size=beam_size, cpu_threads=threads, window_s=window_s)
    return WhisperTranscriber(cfg)


def looped(codes: np.ndarray) -> bool:
    period, run = longest_code_cycle(np.asarray(codes), LOOP_MAX_PERIOD)
    return period > 0 and run >= LOOP_MIN_S * CODES_PER_SECOND


@dataclass
class LabSystem:
    """The lab LM + codec + Whisper, sampling through ``grpo.generation.HFGenerator`` and ``reward.hook``."""

    model: Any
    tokenizer: Any
    vocab: Any
    decoder: Any
    transcriber: Any
    codec_dir: Path

    @classmethod
    def load(cls, model_dir: str | Path, codec_dir: str | Path, transcriber: Any = None) -> LabSystem:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from tts.codec import XCodec2Decoder
        from tts.llasa import SpeechVocab

        tok = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        decoder = XCodec2Decoder.from_pretrained(codec_dir)
        return cls(model, tok, SpeechVocab.from_tokenizer(tok), decoder, transcriber or whisper(), Path(codec_dir))

    def prompt_ids(self, rows: Sequence[Mapping[str, Any]]) -> list[list[int]]:
        """rows: text (+ ref_text, ref_codes for cloning) -> the Llasa prompt of each."""
        from tts.llasa import PromptFormat, build_prompt_ids

        fmt = PromptFormat()
        return [
            build_prompt_ids(
                self.tokenizer,
                fmt,
                r["text"],
                ref_text=r.get("ref_text"),
                ref_codes=r.get("ref_codes"),
                vocab=self.vocab,
            )
            for r in rows
        ]

    def speak(
        self,
        rows: Sequence[Mapping[str, Any]],
        *,
        temperature: float,
        group_size: int = 2,
        max_new_tokens: int = 400,
        seed: int = 0,
        prompts: Sequence[list[int]] | None = None,
    ) -> list[Any]:
        """rows: text (+ ref_text, ref_codes for cloning), language -> ``group_size`` SpeechRollouts per row (≥ 2).

        ``prompts``: sample from these instead of the rows' own prompts (``prompt_ids``; e.g. with codes appended)."""
        import dataclasses

        from grpo.config import GenerationConfig
        from grpo.generation import HFGenerator
        from reward.hook import SpeechHook

        prompts = self.prompt_ids(rows) if prompts is None else prompts
        gen = HFGenerator(
            self.model,
            GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=1.0, top_k=0),
            pad_id=self.vocab.stop_id,
            stop_ids=[self.vocab.stop_id],
        )
        torch.manual_seed(seed)
        rollouts = gen.generate(prompts, group_size)
        meta = tuple(dict(r, language=r.get("language", "en")) for r in rows for _ in range(group_size))
        return SpeechHook(self.vocab, self.decoder, self.transcriber)(dataclasses.replace(rollouts, meta=meta))


def summarize(rollouts: Sequence[Any], espeak_seconds: Sequence[float] | None = None) -> dict[str, float]:
    wers = [error_rate(r.text, r.transcript.text, r.language) for r in rollouts]
    out = {
        "n": len(rollouts),
        "wer_mean": float(np.mean(wers)),
        "wer_median": float(np.median(wers)),
        "finish_rate": float(np.mean([bool(r.finished) for r in rollouts])),
        "loop_rate": float(np.mean([looped(r.codes) for r in rollouts])),
    }
    if espeak_seconds is not None:
        out["duration_ratio"] = float(
            np.mean([r.duration_s / s for r, s in zip(rollouts, espeak_seconds, strict=True)])
        )
    return {k: round(v, 4) for k, v in out.items()}


def codec_wers(
    codec_dir: str | Path, texts: Sequence[str], originals: Sequence[np.ndarray], transcriber: Any
) -> tuple[float, float]:
    """Mean Whisper WER of the espeak originals and of their encode -> decode reconstructions."""
    from lab.codec import LabEncoder
    from tts.codec import XCodec2Decoder

    enc, dec = LabEncoder.from_pretrained(codec_dir), XCodec2Decoder.from_pretrained(codec_dir)
    with torch.inference_mode():
        recon = [dec.decode(enc.encode(torch.from_numpy(w)[None]))[0].numpy() for w in originals]
    langs = ["en"] * len(texts)
    wer = [
        float(
            np.mean(
                [
                    error_rate(x, t.text, "en")
                    for x, t in zip(texts, transcriber.transcribe(list(a), langs), strict=True)
                ]
            )
        )
        for a in (originals, recon)
    ]
    return wer[0], wer[1]


def code_statistics(codes: Mapping[str, np.ndarray]) -> dict[str, float]:
    allc = np.concatenate([np.asarray(c).reshape(-1) for c in codes.values()])
    counts = np.bincount(allc, minlength=4**8).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return {"codes_used": int((counts > 0).sum()), "entropy_bits": round(float(-(p * np.log2(p)).sum()), 3)}


def voice_similarity(
    system: LabSystem,
    rows: Sequence[Mapping[str, Any]],
    data_dir: Path,
    *,
    temperature: float = 0.8,
    seed: int = 0,
    max_new_tokens: int = 400,
) -> tuple[float, float]:
    """Clone each row (text, ref_audio, ref_text, speaker) and compare the resemblyzer similarity of the result
    to the reference clip's voice and to the other voices' clips (``data_dir/lab_refs/<speaker>.wav``).

    Returns (mean similarity to the reference voice, mean similarity to the other voices)."""
    from lab.codec import file_encoder
    from reward.speaker import embed_file, embed_wav

    encode = file_encoder(system.codec_dir)
    clips = {p.stem: embed_file(str(p)) for p in sorted((data_dir / "lab_refs").glob("*.wav"))}
    prompts = [dict(r, ref_codes=encode(data_dir / r["ref_audio"])) for r in rows]
    out = system.speak(prompts, temperature=temperature, seed=seed, max_new_tokens=max_new_tokens)
    same, other = [], []
    for i, r in enumerate(out):
        if r.audio.size < 1600:  # under 0.1 s: no voice to compare
            continue
        e = embed_wav(r.audio)
        speaker = rows[i // 2]["speaker"]
        same.append(float(np.dot(e, clips[speaker])))
        other.append(float(np.mean([np.dot(e, v) for k, v in clips.items() if k != speaker])))
    return float(np.mean(same)), float(np.mean(other))


def measure(
    out: Path,
    utts: Sequence[Any],
    n: int,
    *,
    seed: int = 0,
    temperatures: Sequence[float] = (0.6, 0.8, 1.0),
    max_new_tokens: int = 400,
) -> dict:
    """The build summary's measurements (see module doc); ``n`` sentences per group, 2 samples each."""
    from tts.audio import load_audio

    corpus_dir = out / "corpus"
    transcriber = whisper(beam_size=5, window_s=10.0)  # beam 1 adds its own errors; the reward's 10 s window
    held = [u for u in utts if u.split == "heldout"][:n]
    wer_espeak, wer_codec = codec_wers(
        out / "codec", [u.text for u in held], [load_audio(corpus_dir / u.audio) for u in held], transcriber
    )
    codec = {"heldout_n": len(held), "wer_espeak": round(wer_espeak, 4), "wer_reconstruction": round(wer_codec, 4)}
    report: dict[str, Any] = {"codec": {**codec, **code_statistics(dict(np.load(out / "codes.npz")))}}
    system = LabSystem.load(out / "llasa", out / "codec", transcriber)
    seen = list({u.text: u for u in utts if u.lm and u.split == "train"}.values())[:n]
    lm: dict[str, Any] = {}
    for t in temperatures:
        for name, group in (("seen", seen), ("unseen", held)):
            secs = [load_audio(corpus_dir / u.audio).size / 16000 for u in group for _ in range(2)]
            rollouts = system.speak(
                [{"text": u.text} for u in group], temperature=t, seed=seed, max_new_tokens=max_new_tokens
            )
            lm[f"T{t}_{name}"] = summarize(rollouts, secs)
    report["lm"] = lm
    return report
