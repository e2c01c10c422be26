"""Audio-level measurements that need no codes and no ASR: where the speech is, and self-repetition.

Everything works on 10 ms frames and in blocks of frames, so memory grows linearly with the clip's duration
(a 10-minute file is scored like a 3-second one, only longer). ``floor_dbfs`` is ``reward.floor_dbfs``: the one
absolute level below which a frame is never speech nor part of a loop (the callers pass the config's value).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from tts.constants import SAMPLE_RATE

HOP = 160  # samples per analysis frame (10 ms)
HOP_S = HOP / SAMPLE_RATE
N_FFT = 400  # 25 ms Hann window, Whisper's
BLOCK = 2048  # frames per block of the spectrogram: bounds its working memory
SIM_BLOCK = 256  # frames per block of the similarity band (each block costs SIM_BLOCK × (SIM_BLOCK + lags))
LAG_BLOCK = 16  # lags per block of the run search
CHAIN_RATIO = 1.5  # linked copies of a chain: spans and lags within this factor of each other
MIN_HIT_SHARE = 0.05  # matches in a run: at least this share of its span (the rest are quiet pairs)
ACTIVE_ABOVE_FLOOR_DB = 10.0  # a frame is "active" this far above the clip's noise floor
MAX_CHAIN_RUNS = 1000  # runs considered for chains (the R × R link arrays stay under ~30 MB)
SHAPE_RANGE = 5.0  # log10 units (50 dB) of each frame's own spectrum kept for its shape; below is flattened


@lru_cache(maxsize=1)
def _mel_filters() -> np.ndarray:
    from faster_whisper.feature_extractor import FeatureExtractor

    filters = FeatureExtractor(feature_size=80, sampling_rate=SAMPLE_RATE, hop_length=HOP).mel_filters
    return np.asarray(filters, dtype=np.float32)  # [80, 201]


def frame_db(audio: np.ndarray) -> np.ndarray:
    """Power of each 10 ms frame in dBFS, [T] with T = len // HOP + 1 (the spectrogram's frame count)."""
    wav = np.asarray(audio, dtype=np.float32).reshape(-1)
    n = len(wav) // HOP + 1
    power = np.zeros(n, dtype=np.float64)
    whole = len(wav) // HOP * HOP
    power[: whole // HOP] = np.mean(np.square(wav[:whole].reshape(-1, HOP), dtype=np.float64), axis=1)
    if len(wav) > whole:
        power[whole // HOP] = np.mean(np.square(wav[whole:], dtype=np.float64))
    return 10 * np.log10(power + 1e-12)


def spectral_shapes(audio: np.ndarray) -> np.ndarray:
    """Unit-norm spectral shape of every frame, [80, T] float32: log-mel minus its mean over bands.

    Each frame is floored at its own maximum minus ``SHAPE_RANGE`` (not the clip's loudest frame), so a soft
    fricative keeps its shape, and the mean is removed, so the shape does not depend on loudness. Digital
    silence has no shape (a zero vector, similar to nothing).
    """
    wav = np.asarray(audio, dtype=np.float32).reshape(-1)
    wav = np.pad(wav, N_FFT // 2, mode="reflect" if len(wav) > N_FFT // 2 else "constant")
    window = np.hanning(N_FFT + 1)[:-1].astype(np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(wav, N_FFT)[::HOP]  # a view: no copy
    shapes = np.empty((80, len(frames)), dtype=np.float32)
    for a in range(0, len(frames), BLOCK):
        power = np.abs(np.fft.rfft(frames[a : a + BLOCK] * window, axis=1)) ** 2  # [B, 201]
        log = np.log10(_mel_filters() @ power.T.astype(np.float32) + 1e-10)  # [80, B]
        log = np.maximum(log, log.max(axis=0, keepdims=True) - SHAPE_RANGE)
        x = log - log.mean(axis=0, keepdims=True)
        shapes[:, a : a + BLOCK] = x / np.maximum(np.linalg.norm(x, axis=0, keepdims=True), 1e-6)
    return shapes


def active_frames(db: np.ndarray, floor_dbfs: float) -> np.ndarray:
    """[T] bool: frames clearly above the clip's own noise floor, however soft (a breath, an "s", a word's tail).

    The floor is the 5th percentile of frame power (the pauses and edges every utterance has), capped 40 dB
    under the loudest frame for clips with no quiet part at all, and never below ``floor_dbfs``.
    """
    if db.size == 0:
        return np.zeros(0, dtype=bool)
    floor = max(min(float(np.percentile(db, 5)), float(db.max()) - 40.0), floor_dbfs)
    return db > floor + ACTIVE_ABOVE_FLOOR_DB


def lag_similarity(shapes: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """s[t, j] = <x_t, x_{t+lo+j}> for lags lo..hi frames, [T, hi − lo + 1] float32; 0 past the end.

    Only the band of lags is computed, ``SIM_BLOCK`` frames at a time: memory T × (number of lags), never T × T.
    """
    dims, n = shapes.shape
    width = hi - lo + 1
    padded = np.concatenate([shapes, np.zeros((dims, hi + SIM_BLOCK), dtype=np.float32)], axis=1)
    out = np.empty((n, width), dtype=np.float32)
    for a in range(0, n, SIM_BLOCK):
        b = min(a + SIM_BLOCK, n)
        gram = np.ascontiguousarray(shapes[:, a:b].T @ padded[:, a + lo : b + hi])  # [b − a, (b − a) + width − 1]
        # row i holds lags lo.. at columns i..i + width − 1: a strided view walks that diagonal band
        out[a:b] = np.lib.stride_tricks.as_strided(
            gram, shape=(b - a, width), strides=(gram.strides[0] + gram.strides[1], gram.strides[1])
        )
    return out


@dataclass(frozen=True)
class Run:
    lag: int  # frames
    start: int  # first matching frame of the earlier copy
    end: int  # one past its last matching frame
    hits: int  # matching frame pairs in between (the rest are pairs of quiet frames)

    @property
    def span(self) -> int:
        return self.end - self.start


def repeat_runs(hit: np.ndarray, quiet: np.ndarray, lo: int, min_span: int) -> list[Run]:
    """Runs in each column (lag lo + j) of [T, lags] frame pairs: consecutive pairs that match (``hit``) or are
    both quiet (``quiet``), from the first match to the last, with a span of at least ``min_span`` frames.

    Quiet pairs bridge because a looped segment that contains a stop closure or a breath gap repeats its
    silence too (quiet at t and at t + L); speech that does not repeat has a quiet frame facing an active one
    there, which ends the run.
    """
    n, width = hit.shape
    sep = np.zeros((width, 1), dtype=bool)  # one break between columns keeps runs from joining
    hits = np.concatenate([hit.T, sep], axis=1).reshape(-1)
    on = hits | np.concatenate([quiet.T, sep], axis=1).reshape(-1)
    edges = np.flatnonzero(np.diff(np.concatenate([[False], on, [False]]).astype(np.int8)))
    starts, ends = edges[::2], edges[1::2]
    where = np.flatnonzero(hits)
    if where.size == 0:
        return []
    # first and last match inside each run: the run is trimmed to them
    first = where[np.minimum(np.searchsorted(where, starts), where.size - 1)]
    last = where[np.maximum(np.searchsorted(where, ends) - 1, 0)]
    count = np.searchsorted(where, ends) - np.searchsorted(where, starts)
    keep = (count > 0) & (last + 1 - first >= min_span)
    first, last, count = first[keep], last[keep], count[keep]
    col = first // (n + 1)
    return [
        Run(int(c) + lo, int(f % (n + 1)), int(e % (n + 1)) + 1, int(k))
        for c, f, e, k in zip(col, first, last, count, strict=True)
    ]


def chained(runs: list[Run], min_copies: int) -> list[Run]:
    """Runs that belong to a chain of at least ``min_copies`` copies of one sound: run A's repeat (its frames
    shifted by its lag) is run B's source, B's repeat is C's source, …; the lags may differ (a word said again
    after gaps of varying length)."""
    if len(runs) < min_copies - 1:
        return []
    # the link arrays are R × R: on a pathological clip (a long pure tone matches at every lag) keep the longest
    runs = sorted(runs, key=lambda r: -r.hits)[:MAX_CHAIN_RUNS]
    src = np.array([(r.start, r.end) for r in runs])  # [R, 2]
    dst = src + np.array([r.lag for r in runs])[:, None]
    lag = np.array([r.lag for r in runs], dtype=np.float64)
    span = (src[:, 1] - src[:, 0]).astype(np.float64)
    # link a -> b when a's repeat and b's source overlap by at least half of the shorter of the two, and b is
    # the same sound again: a similar length, after a similar gap (a stutter's gaps vary, not tenfold); two
    # chance matches of different sounds at unrelated lags are no chain
    overlap = np.minimum(dst[:, None, 1], src[None, :, 1]) - np.maximum(dst[:, None, 0], src[None, :, 0])
    link = (
        (overlap * 2 >= np.minimum(span[:, None], span[None, :]))
        & (np.maximum(span[:, None], span[None, :]) <= CHAIN_RATIO * np.minimum(span[:, None], span[None, :]))
        & (np.maximum(lag[:, None], lag[None, :]) <= CHAIN_RATIO * np.minimum(lag[:, None], lag[None, :]))
    )
    np.fill_diagonal(link, False)
    # links before and after each run along the longest chain through it (a DAG: sources only move forward)
    after = np.zeros(len(runs), dtype=np.int64)
    before = np.zeros(len(runs), dtype=np.int64)
    for _ in range(min_copies):
        after = np.max(np.where(link, after[None, :] + 1, 0), axis=1)
        before = np.max(np.where(link.T, before[None, :] + 1, 0), axis=1)
    copies = 2 + after + before  # a run is itself two copies
    return [r for r, c in zip(runs, copies, strict=True) if c >= min_copies]


def repeated_seconds(
    audio: np.ndarray,
    min_lag_s: float,
    max_lag_s: float,
    similarity: float,
    min_run_s: float,
    chain_min_s: float,
    chain_copies: int,
    floor_dbfs: float,
) -> float:
    """Seconds of audio that repeat themselves: a hang-up loop, or a word said again and again.

    s_L(t) = <x_t, x_{t+L}> compares the spectral shapes (``spectral_shapes``) of frames L apart, for every lag
    L in [min_lag_s, max_lag_s]. A frame pair matches if s_L(t) > ``similarity`` and both frames are active
    (above the clip's noise floor, however soft, and above ``floor_dbfs``); pairs of quiet frames bridge
    (``repeat_runs``). Two kinds of evidence count:

    - a run spanning ≥ ``min_run_s`` at one lag, at least ``MIN_HIT_SHARE`` of it matching: a segment looped in
      place (a steady vowel or a sustained "mmm" changes too much within 0.3 s to match itself at one lag);
    - runs spanning ≥ ``chain_min_s`` whose two copies do not overlap, chaining into ≥ ``chain_copies`` copies
      of one sound, each at its own lag: a stutter with gaps of varying length ("if — if — if — if the …").

    The result is the number of frames covered by such runs and their repeats, in seconds.
    """
    db = frame_db(audio)
    n = len(db)
    lo, hi = max(1, round(min_lag_s / HOP_S)), min(round(max_lag_s / HOP_S), n - 1)
    min_run, min_chain = max(1, round(min_run_s / HOP_S)), max(1, round(chain_min_s / HOP_S))
    if hi < lo:
        return 0.0
    active = active_frames(db, floor_dbfs)
    sim = lag_similarity(spectral_shapes(audio), lo, hi)  # [T, lags]
    t = np.arange(n)[:, None]
    runs: list[Run] = []
    for j in range(0, hi - lo + 1, LAG_BLOCK):  # blocks of lags bound the boolean and index temporaries
        lags = np.arange(lo + j, min(lo + j + LAG_BLOCK, hi + 1))
        later = t + lags[None, :]  # [T, block] frame index of the later copy
        inside = later < n
        partner = np.where(inside, active[np.minimum(later, n - 1)], False)
        hit = (sim[:, j : j + len(lags)] > similarity) & active[:, None] & partner
        quiet = ~active[:, None] & ~partner & inside
        runs += repeat_runs(hit, quiet, int(lags[0]), min(min_run, min_chain))
    runs = [r for r in runs if r.hits >= MIN_HIT_SHARE * r.span]
    loops = [r for r in runs if r.span >= min_run]
    copies = [r for r in runs if min_chain <= r.span <= r.lag]  # a sound, then its repeat after it
    covered = np.zeros(n + 1, dtype=np.int32)  # difference array: +1 at a start, −1 past an end
    for r in loops + chained(copies, chain_copies):
        covered[r.start] += 1
        covered[min(r.end + r.lag, n)] -= 1
    return float(np.count_nonzero(np.cumsum(covered[:n])) * HOP_S)


@dataclass(frozen=True)
class SpeechActivity:
    """Where the speech is in a clip (seconds), from the energy of its 10 ms frames."""

    duration_s: float
    leading_s: float  # non-speech before the first speech frame (the whole clip if there is none)
    trailing_s: float  # after the last one
    longest_pause_s: float  # the longest stretch of non-speech between the first and the last speech frame
    pause_s: float  # all non-speech between them, in pauses of at least the minimum pause length
    speech_s: float  # from the first to the last speech frame, less those pauses: what the rate is measured on

    @property
    def pause_share(self) -> float:
        """Pauses as a share of the span from the first to the last speech frame."""
        span = self.speech_s + self.pause_s
        return self.pause_s / span if span > 0 else 0.0


def speech_activity(audio: np.ndarray, below_peak_db: float, min_pause_s: float, floor_dbfs: float) -> SpeechActivity:
    """Frames within ``below_peak_db`` of the speech level (the 95th percentile of frame power, so one click
    sets nothing) and above ``floor_dbfs`` are speech; shorter non-speech stretches than ``min_pause_s`` inside
    the speech (stop closures, the quiet part of a fricative) are part of it."""
    samples = int(np.asarray(audio).size)
    duration = samples / SAMPLE_RATE
    db = frame_db(audio)  # the last frame is the partial one (or empty)
    level = float(np.percentile(db, 95))
    threshold = max(level - below_peak_db, floor_dbfs)
    on = np.flatnonzero(db > threshold)
    if on.size == 0:
        return SpeechActivity(duration, duration, 0.0, 0.0, 0.0, 0.0)
    first, last = int(on[0]), int(on[-1]) + 1
    begin, end = first * HOP_S, min(last * HOP, samples) / SAMPLE_RATE
    quiet = np.ones(last - first + 2, dtype=np.int8)
    quiet[1:-1] = db[first:last] <= threshold
    quiet[0] = quiet[-1] = 0
    edges = np.flatnonzero(np.diff(quiet))
    gaps = edges[1::2] - edges[::2]  # lengths of the non-speech stretches inside, in frames
    pause_s = float(gaps[gaps >= round(min_pause_s / HOP_S)].sum()) * HOP_S
    return SpeechActivity(
        duration_s=duration,
        leading_s=begin,
        trailing_s=duration - end,
        longest_pause_s=float(gaps.max(initial=0)) * HOP_S,
        pause_s=pause_s,
        speech_s=end - begin - pause_s,
    )
