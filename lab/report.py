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
from tts.codec import CODES_PER_SECOND

LOOP_MAX_PERIOD, LOOP_MIN_S = 8, 1.0  # the definition: codes cycling with period ≤ 8 for ≥ 1 s


def whisper(beam_size: int = 1, threads: int = 2) -> Any:
    from reward.config import TranscriberConfig
    from reward.transcribe import make_transcriber

    return make_transcriber(TranscriberConfig(model="whisper-base-pypi", beam_size=beam_size, cpu_threads=threads))


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

    @classmethod
    def load(cls, model_dir: str | Path, codec_dir: str | Path, transcriber: Any = None) -> LabSystem:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from tts.codec import XCodec2Decoder
        from tts.llasa import SpeechVocab

        tok = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        return cls(
            model,
            tok,
            SpeechVocab.from_tokenizer(tok),
            XCodec2Decoder.from_pretrained(codec_dir),
            transcriber or whisper(),
        )

    def speak(
        self,
        rows: Sequence[Mapping[str, Any]],
        *,
        temperature: float,
        group_size: int = 2,
        max_new_tokens: int = 400,
        seed: int = 0,
    ) -> list[Any]:
        """rows: text (+ ref_text, ref_codes for cloning), language -> ``group_size`` SpeechRollouts per row (≥ 2)."""
        import dataclasses

        from grpo.config import GenerationConfig
        from grpo.generation import HFGenerator
        from reward.hook import SpeechHook
        from tts.llasa import PromptFormat, build_prompt_ids

        fmt = PromptFormat()
        prompts = [
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


def codec_report(
    corpus_dir: Path, codec_dir: Path, utts: Sequence[Any], codes: Mapping[str, np.ndarray], n: int, transcriber: Any
) -> dict:
    """Whisper WER of espeak originals vs codec reconstructions on ``n`` held-out utterances; code statistics."""
    from lab.codec import LabEncoder
    from tts.audio import load_audio
    from tts.codec import XCodec2Decoder

    held = [u for u in utts if u.split == "heldout"][:n]
    enc, dec = LabEncoder.from_pretrained(codec_dir), XCodec2Decoder.from_pretrained(codec_dir)
    originals = [load_audio(corpus_dir / u.audio) for u in held]
    with torch.inference_mode():
        recon = [dec.decode(enc.encode(torch.from_numpy(w)[None]))[0].numpy() for w in originals]
    langs = ["en"] * len(held)
    wer_orig = [
        error_rate(u.text, t.text, "en") for u, t in zip(held, transcriber.transcribe(originals, langs), strict=True)
    ]
    wer_rec = [
        error_rate(u.text, t.text, "en") for u, t in zip(held, transcriber.transcribe(recon, langs), strict=True)
    ]
    allc = np.concatenate([np.asarray(c).reshape(-1) for c in codes.values()])
    counts = np.bincount(allc, minlength=4**8).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return {
        "heldout_n": len(held),
        "wer_espeak": round(float(np.mean(wer_orig)), 4),
        "wer_reconstruction": round(float(np.mean(wer_rec)), 4),
        "codes_used": int((counts > 0).sum()),
        "entropy_bits": round(float(-(p * np.log2(p)).sum()), 3),
    }


def clone_report(
    system: LabSystem,
    corpus_dir: Path,
    utts: Sequence[Any],
    codes: Mapping[str, np.ndarray],
    n: int,
    temperature: float,
    seed: int,
    max_new_tokens: int = 400,
) -> dict:
    """For ``n`` seen sentences spoken by voices A and B: clone with a reference of A (another sentence of A) and
    compare the resemblyzer similarity of the result to A's and to B's voice (mean embeddings of their clips)."""
    from reward.speaker import embed_file, embed_wav

    by_text: dict[str, list[Any]] = {}
    for u in utts:
        if u.lm and u.split == "train":
            by_text.setdefault(u.text, []).append(u)
    pairs = [v for v in by_text.values() if len(v) == 2][:n]
    by_speaker: dict[str, list[Any]] = {}
    for u in utts:
        by_speaker.setdefault(u.speaker, []).append(u)
    voice = {
        s: np.mean([embed_file(str(corpus_dir / u.audio)) for u in us[:8]], axis=0) for s, us in by_speaker.items()
    }
    rows, targets = [], []
    for a, b in pairs:
        ref = next(u for u in by_speaker[a.speaker] if u.lm and u.text != a.text)
        rows.append({"text": a.text, "ref_text": ref.text, "ref_codes": codes[ref.id], "language": "en"})
        targets.append((a.speaker, b.speaker))
    out = system.speak(rows, temperature=temperature, seed=seed, max_new_tokens=max_new_tokens)
    sim_a, sim_b = [], []
    for i, r in enumerate(out):
        if r.audio.size < 1600:
            continue
        e = embed_wav(r.audio)
        a, b = targets[i // 2]
        sim_a.append(float(np.dot(e, voice[a]) / np.linalg.norm(voice[a])))
        sim_b.append(float(np.dot(e, voice[b]) / np.linalg.norm(voice[b])))
    return {
        "n": len(sim_a),
        "similarity_to_reference_voice": round(float(np.mean(sim_a)), 4) if sim_a else None,
        "similarity_to_other_voice": round(float(np.mean(sim_b)), 4) if sim_b else None,
        "closer_to_reference_share": round(float(np.mean(np.array(sim_a) > np.array(sim_b))), 4) if sim_a else None,
        **{f"clone_{k}": v for k, v in summarize(out).items()},
    }


def measure(
    out: Path,
    utts: Sequence[Any],
    n: int,
    *,
    seed: int = 0,
    temperatures: Sequence[float] = (0.6, 0.8, 1.0),
    max_new_tokens: int = 400,
) -> dict:
    """The build summary's measurements (see module doc); ``n`` sentences per group."""
    corpus_dir = out / "corpus"
    codes = dict(np.load(out / "codes.npz"))
    transcriber = whisper()
    report: dict[str, Any] = {"codec": codec_report(corpus_dir, out / "codec", utts, codes, n, transcriber)}
    system = LabSystem.load(out / "llasa", out / "codec", transcriber)
    from tts.audio import load_audio

    seen = list({u.text: u for u in utts if u.lm and u.split == "train"}.values())[:n]
    unseen = [u for u in utts if u.split == "heldout"][:n]
    lm: dict[str, Any] = {}
    for t in temperatures:
        for name, group in (("seen", seen), ("unseen", unseen)):
            secs = [load_audio(corpus_dir / u.audio).size / 16000 for u in group for _ in range(2)]
            rollouts = system.speak(
                [{"text": u.text} for u in group], temperature=t, seed=seed, max_new_tokens=max_new_tokens
            )
            lm[f"T{t}_{name}"] = summarize(rollouts, secs)
    report["lm"] = lm
    report["cloning"] = clone_report(system, corpus_dir, utts, codes, max(2, n // 2), 0.8, seed, max_new_tokens)
    return report
