"""Reward terms: small pure functions ``(SpeechRollout, StepContext) -> float in [0, 1] | None``.

None means "not applicable" (e.g. ``token_loop`` without speech codes) and leaves the term out of the
combination. No term decodes or transcribes; they all read the one shared transcript and audio.
"""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

from reward.audio_features import SpeechActivity, repeated_seconds, speech_activity
from reward.combine import active_terms
from reward.config import RewardConfig
from reward.dnsmos import Dnsmos, dnsmos
from reward.normalize import error_rate, normalize
from reward.rate import letters_per_second
from reward.rollout import PauseLimits, SpeechRollout, StepContext
from tomlconfig import FieldError
from tts.constants import CODES_PER_SECOND

RewardTerm = Callable[[SpeechRollout, StepContext], "float | None"]
TERMS: dict[str, RewardTerm] = {}


def register(name: str) -> Callable[[RewardTerm], RewardTerm]:
    def add(fn: RewardTerm) -> RewardTerm:
        if name in TERMS:
            raise ValueError(f"[reward] term {name!r} registered twice")
        TERMS[name] = fn
        return fn

    return add


def get_term(name: str) -> RewardTerm:
    try:
        return TERMS[name]
    except KeyError:
        raise KeyError(f"[reward] unknown term {name!r} in reward.weights/gates; known: {sorted(TERMS)}") from None


def resolve_terms(config: RewardConfig) -> dict[str, RewardTerm]:
    """The functions of the config's active terms (``combine.active_terms`` order). A name in ``weights`` or
    ``gates`` that is not registered is a ``FieldError`` naming its key, so the loader reports file and key."""
    known = ", ".join(sorted(TERMS))
    for table, values in (("weights", config.weights), ("gates", config.gates)):
        for name, value in values.items():
            if name not in TERMS:
                raise FieldError(f"{table}.{name}", value, f"unknown reward term; known terms: {known}")
    return {name: TERMS[name] for name in active_terms(config)}


# Measurements several terms (and the scorer's metrics) read, computed once per rollout: the rollout is frozen,
# so a value never goes stale, and the entry goes away with the rollout.
_MEMO: weakref.WeakKeyDictionary[SpeechRollout, dict[Hashable, Any]] = weakref.WeakKeyDictionary()


def _once(r: SpeechRollout, key: Hashable, compute: Callable[[], Any]) -> Any:
    memo = _MEMO.setdefault(r, {})
    if key not in memo:
        memo[key] = compute()
    return memo[key]


def rollout_error_rate(r: SpeechRollout, variant: str = "wer") -> float:
    """WER (or CER) of the rollout's transcript against its text; the ``wer`` term and the scorer's ``asr/wer``
    metric share one computation."""
    return _once(r, ("error_rate", variant), lambda: error_rate(r.text, r.transcript.text, r.language, variant))


def rollout_activity(r: SpeechRollout, ctx: StepContext) -> SpeechActivity:
    """Where the speech is (``speaking_rate`` and ``pauses`` read the same measurement)."""
    cfg = ctx.config
    key = ("activity", cfg.pause_below_peak_db, cfg.pause_min_s, cfg.floor_dbfs)
    return _once(r, key, lambda: speech_activity(r.audio, cfg.pause_below_peak_db, cfg.pause_min_s, cfg.floor_dbfs))


@register("wer")
def wer(r: SpeechRollout, ctx: StepContext) -> float:
    """exp(−WER) (or exp(−CER) with ``wer_variant='cer'``), as in the original experiment."""
    return math.exp(-rollout_error_rate(r, ctx.config.wer_variant))


def max_consecutive_repeats(words: list[str], max_n: int = 4) -> int:
    """Longest run of one n-gram (n ≤ max_n) repeated back to back: 'ha ha ha' → 3."""
    best = 1 if words else 0
    for n in range(1, max_n + 1):
        for start in range(len(words) - n):
            count, i = 1, start + n
            while words[i : i + n] == words[start : start + n] and len(words[i : i + n]) == n:
                count, i = count + 1, i + n
            best = max(best, count)
    return best


def longest_letter_run(text: str) -> int:
    """Longest run of one letter ('Feeeeee' → 6); digits and punctuation are not letters."""
    best, prev, run = 0, "", 0
    for ch in text:
        run = run + 1 if ch == prev else 1
        prev = ch
        if ch.isalpha():
            best = max(best, run)
    return best


@register("hangup")
def hangup(r: SpeechRollout, ctx: StepContext) -> float:
    """0 if the transcript stutters more than the text does: a run of one letter ≥ ``hangup_char_run`` (the
    original ``(.)\\1{5,}``, on letters of the normalised transcript, so "1000000" or "......" is no stutter) or
    one word/phrase repeated ≥ ``hangup_word_repeats`` times in a row."""
    cfg = ctx.config
    hyp, ref = normalize(r.transcript.text, r.language), normalize(r.text, r.language)
    run = longest_letter_run(hyp)
    if run >= cfg.hangup_char_run and run > longest_letter_run(ref):
        return 0.0
    repeats = max_consecutive_repeats(hyp.split())
    return 0.0 if repeats >= cfg.hangup_word_repeats and repeats > max_consecutive_repeats(ref.split()) else 1.0


def longest_code_cycle(codes: np.ndarray, max_period: int) -> tuple[int, int]:
    """(period, length in codes) of the longest stretch where codes[t] == codes[t + p] for one p ≤ max_period."""
    best = (0, 0)
    for p in range(1, max_period + 1):
        if len(codes) <= p:
            break
        same = np.concatenate([[0], (codes[p:] == codes[:-p]).astype(np.int8), [0]])
        edges = np.flatnonzero(np.diff(same))
        if len(edges):
            run = int((edges[1::2] - edges[::2]).max()) + p  # the first period plus its matching continuation
            if run > best[1]:
                best = (p, run)
    return best


@register("token_loop")
def token_loop(r: SpeechRollout, ctx: StepContext) -> float | None:
    """0 if the speech codes cycle with period p ≤ ``loop_max_period`` for ≥ ``loop_min_repeats`` periods and
    ≥ ``loop_min_s`` seconds (``<s_111><s_222><s_333>`` …): loops Whisper may transcribe as one word. Needs codes."""
    if r.codes is None:
        return None
    cfg = ctx.config
    period, run = longest_code_cycle(np.asarray(r.codes), cfg.loop_max_period)
    if period == 0:
        return 1.0
    looped = run >= period * cfg.loop_min_repeats and run >= cfg.loop_min_s * CODES_PER_SECOND
    return 0.0 if looped else 1.0


@register("audio_repeat")
def audio_repeat(r: SpeechRollout, ctx: StepContext) -> float:
    """exp(−s / scale) where s = seconds of audio repeating itself (``reward.audio_features.repeated_seconds``):
    a hang-up loop, also in a soft stretch (a fricative, a breath), or a word stuttered with gaps.

    Needs no codes and no ASR: Whisper often transcribes a 100 ms segment looped 20× perfectly, and writes a
    stuttered word once."""
    cfg = ctx.config
    s = repeated_seconds(
        r.audio,
        cfg.repeat_min_lag_s,
        cfg.repeat_max_lag_s,
        cfg.repeat_similarity,
        cfg.repeat_min_s,
        cfg.repeat_chain_min_s,
        cfg.repeat_chain_copies,
        cfg.floor_dbfs,
    )
    return math.exp(-s / cfg.repeat_scale_s)


@register("pauses")
def pauses(r: SpeechRollout, ctx: StepContext) -> float:
    """exp(−excess / pause_scale_s): seconds of leading, trailing and internal non-speech beyond what the data's
    reference clips show (``reward.rate.reference_pause_limits``; the config's allowances without references),
    plus the internal pauses beyond the allowed share of the speech. Silence padding wastes tokens, breaks the
    prosody, and would otherwise fake a slow speaking rate. No speech at all: 0."""
    a = rollout_activity(r, ctx)
    if a.speech_s <= 0:
        return 0.0
    lim = ctx.pause_limits or PauseLimits.from_config(ctx.config)
    span = a.speech_s + a.pause_s
    excess = (
        max(0.0, a.leading_s - lim.leading_s)
        + max(0.0, a.trailing_s - lim.trailing_s)
        + max(0.0, a.longest_pause_s - lim.longest_s)
        + max(0.0, a.pause_s - lim.share * span)
    )
    return math.exp(-excess / ctx.config.pause_scale_s)


@register("speaking_rate")
def speaking_rate(r: SpeechRollout, ctx: StepContext) -> float:
    """Letters per second of speech ρ (``reward.rate.letters_per_second`` over ``SpeechActivity.speech_s``: the
    clip less its pauses) against the band [lo, hi]: 1 inside, exp(−(ln(ρ/edge) / tol)²) outside — too fast
    (the original exploit) or too slow both lose, and silence padding does not make speech slower."""
    lo, hi = ctx.rate_band or ctx.config.rate_band
    rate = letters_per_second(r.text, r.language, rollout_activity(r, ctx).speech_s)
    if rate is None:
        return 0.0
    if lo <= rate <= hi:
        return 1.0
    edge = lo if rate < lo else hi
    return math.exp(-((math.log(max(rate, 1e-6) / edge) / ctx.config.rate_tolerance) ** 2))


def is_empty(r: SpeechRollout) -> bool:
    """No audio, or audio the transcriber judged silent (RMS below transcriber.silence_dbfs, or no speech)."""
    return r.audio.size == 0 or r.transcript.silent


@register("complete")
def complete(r: SpeechRollout, ctx: StepContext) -> float | None:
    """0 for empty or silent audio; else 1 if generation ended with end-of-speech, 0 if cut at the token budget.
    Audible audio of unknown ending (an audio file) is not applicable."""
    if is_empty(r):
        return 0.0
    if r.finished is None:
        return None
    return 1.0 if r.finished else 0.0


@register("speaker_similarity")
def speaker_similarity(r: SpeechRollout, ctx: StepContext) -> float | None:
    """max(0, cos(e_ref, e_gen)) of speaker embeddings (``reward.speaker``: resemblyzer by default, or the WavLM
    model ``speaker_model`` names); needs a reference voice. Empty or silent audio has no voice: 0."""
    if r.ref_audio is None:
        return None
    if is_empty(r):
        return 0.0
    return max(0.0, rollout_speaker_cosine(r, ctx.config.speaker_model, ctx.config.speaker_device))


def rollout_speaker_cosine(r: SpeechRollout, model: str, device: str = "cpu") -> float:
    """cos(e_ref, e_gen) in [-1, 1] with speaker model ``model`` (the term and evaluate.py's SIM share it)."""
    if r.ref_audio is None:
        raise ValueError("[reward] speaker similarity needs a reference voice (ref_audio)")
    ref = r.ref_audio

    def compute() -> float:
        from reward.speaker import similarity

        return similarity(ref, r.audio, model, device)

    return _once(r, ("speaker", model, device), compute)


def rollout_dnsmos(r: SpeechRollout) -> Dnsmos | None:
    """DNSMOS of the rollout's audio (None without samples), computed once per rollout whether the ``dnsmos``
    term or evaluate.py's ``--dnsmos`` asks first."""
    return _once(r, "dnsmos", lambda: dnsmos(r.audio))


@register("dnsmos")
def dnsmos_term(r: SpeechRollout, ctx: StepContext) -> float:
    """(OVRL − 1) / 4: DNSMOS P.835 overall quality mapped from 1-5 to [0, 1] (``reward.dnsmos``). Not in the
    default weights (a fraction of a second per clip on a CPU): it runs only when weighted. Empty or silent: 0."""
    if is_empty(r):
        return 0.0
    scores = rollout_dnsmos(r)
    return 0.0 if scores is None else min(1.0, max(0.0, (scores.ovrl - 1.0) / 4.0))


# ------------------------------------------------------------- the original experiment's reward (preset "original")
# reward = (exp(−WER) + hangup) / 2, exactly as the seed experiment computed it: its own normalisation (lower-case,
# strip . , ? !; no number spelling), WER by jiwer, and the regex (.)\1{5,} on the raw transcript.

_ORIGINAL_PUNCTUATION = re.compile(r"[.,?!]")
_ORIGINAL_HANGUP = re.compile(r"(.)\1{5,}")


def original_normalize(text: str) -> str:
    return _ORIGINAL_PUNCTUATION.sub("", text.lower())


@register("wer_original")
def wer_original(r: SpeechRollout, ctx: StepContext) -> float:
    """exp(−WER) with the original normalisation: lower-case, strip ``. , ? !`` (numbers are not spelled out)."""
    import jiwer

    return math.exp(-jiwer.wer(original_normalize(r.text), original_normalize(r.transcript.text)))


@register("hangup_original")
def hangup_original(r: SpeechRollout, ctx: StepContext) -> float:
    """0 if the raw transcript matches ``(.)\1{5,}`` (six of one character in a row), else 1."""
    return 0.0 if _ORIGINAL_HANGUP.search(r.transcript.text) else 1.0
