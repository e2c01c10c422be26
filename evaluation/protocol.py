"""Evaluation protocols: the ASR model, WER normalisation and SIM model that a published benchmark prescribes.

``--protocol seedtts`` follows Seed-TTS-eval (github.com/BytedanceSpeech/seed-tts-eval):

- WER (``run_wer.py``): English transcribed by Whisper-large-v3 (transformers ``generate`` with the language
  forced and no beam settings: greedy, float32), Chinese by Paraformer-zh (FunASR) whose output ``zhconv``
  turns into simplified characters. Reference and transcript lose ``string.punctuation`` and
  ``zhon.hanzi.punctuation`` except the apostrophe; English is lower-cased, Chinese split into characters; no
  number spelling. jiwer's WER per clip, averaged over clips (``average_wer.py``), as ``evaluation.report`` does.
- SIM (``cal_sim.sh`` → UniSpeech ``verification.py``): the cosine of speaker embeddings from WavLM-large with an
  ECAPA-TDNN head fine-tuned for speaker verification (checkpoint ``wavlm_large_finetune.pth``), averaged.

Whatever cannot be met here (offline, or not runnable by this project) is replaced by the closest setting, and
every replacement is a caveat: printed when the run starts and ends, and listed in report.md.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from reward.config import TranscriberConfig
from reward.speaker import WAVLM_SV

PROTOCOLS = ("project", "seedtts")
SEEDTTS_ASR = "large-v3"  # faster-whisper's name for the CTranslate2 conversion of openai/whisper-large-v3
SEEDTTS_ASR_REPO = "Systran/faster-whisper-large-v3"
SEEDTTS_SIM = "WavLM-large + ECAPA-TDNN fine-tuned for speaker verification (UniSpeech wavlm_large_finetune.pth)"

# (config key, model name, a file the model folder has, hub repo) → None if loadable, else why not
Availability = Callable[[str, str, str, str], "str | None"]


@dataclass(frozen=True)
class ProtocolChoice:
    name: str
    transcriber: dict[str, Any]  # [transcriber] keys the protocol sets
    normalization: str
    speaker_model: str  # the SIM model (reward.speaker name)
    description: str  # one line for report.md
    caveats: list[str] = field(default_factory=list)


def _base(lang: str) -> str:
    return lang.split("-")[0].lower()


def resolve(
    name: str,
    *,
    transcriber: TranscriberConfig,
    config_speaker_model: str,
    speaker_model: str | None = None,
    normalization: str | None = None,
    transcriber_set: bool = False,
    languages: Collection[str] = (),
    has_references: bool = False,
    available: Availability,
) -> ProtocolChoice:
    """The settings of protocol ``name`` for this run. Explicit choices (``--sim-model``, ``--normalization``,
    ``--set transcriber.model=…``: ``transcriber_set``) win over the protocol, with a caveat where they differ."""
    if name == "project":
        return ProtocolChoice(
            "project",
            {},
            normalization or "project",
            speaker_model or config_speaker_model,
            "project: the configured transcriber, the training reward's normalisation",
        )
    if name != "seedtts":
        raise ValueError(f"[eval] --protocol {name}: use one of {PROTOCOLS}")
    caveats: list[str] = []
    overrides: dict[str, Any] = {}
    langs = {_base(lang) for lang in languages}
    fallback = f"transcriber.model={transcriber.model!r} (beam {transcriber.beam_size}), as configured"
    if transcriber.backend == "http":
        caveats.append(
            f"ASR: transcriber.backend='http': the service's model transcribes ({transcriber.url}); Seed-TTS-eval "
            "uses Whisper-large-v3 greedy: WER is comparable to published numbers only if the service runs that"
        )
    elif transcriber_set:
        if transcriber.model != SEEDTTS_ASR:
            caveats.append(
                f"ASR: {fallback} by --set; Seed-TTS-eval uses Whisper-large-v3 (greedy): WER is comparable to "
                "published numbers only if that is the same model"
            )
    else:
        problem = available("transcriber.model", SEEDTTS_ASR, "model.bin", SEEDTTS_ASR_REPO)
        if problem is None:
            overrides = {"model": SEEDTTS_ASR, "beam_size": 1, "compute_type": "float32"}
        else:
            caveats.append(
                f"ASR: Seed-TTS-eval's Whisper-large-v3 is not available ({problem}); transcribed with {fallback}: "
                "WER is not comparable to published Seed-TTS-eval numbers"
            )
    if "zh" in langs:
        caveats.append(
            "ASR: Seed-TTS-eval transcribes Chinese with Paraformer-zh (FunASR), which this project does not run: "
            "the zh rows are transcribed by Whisper"
        )
    others = sorted(langs - {"en", "zh"})
    if others:
        caveats.append(
            f"WER: Seed-TTS-eval defines en and zh only; the {', '.join(others)} rows follow its English rule "
            "(punctuation stripped, lower-cased)"
        )
    norm = normalization or "seedtts"
    if norm != "seedtts":
        caveats.append(f"WER: --normalization {norm} replaces Seed-TTS-eval's normalisation")
    sim = speaker_model or config_speaker_model
    if has_references:
        if speaker_model is None:
            problem = available("--sim-model", WAVLM_SV, "config.json", WAVLM_SV)
            if problem is None:
                sim = WAVLM_SV
            else:
                caveats.append(f"SIM: {WAVLM_SV} is not available either ({problem}); SIM falls back to {sim!r}")
        caveats.append(
            f"SIM: Seed-TTS-eval embeds with {SEEDTTS_SIM}, which transformers does not load; SIM here is the "
            f"cosine of {sim!r} embeddings, not comparable to published SIM"
        )
    asr = "Whisper-large-v3 greedy float32" if overrides else f"{transcriber.model} (fallback)"
    description = f"seedtts: ASR {asr}, {norm} normalisation, per-clip WER averaged, SIM {sim}"
    return ProtocolChoice("seedtts", overrides, norm, sim, description, caveats)
