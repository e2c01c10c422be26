"""Evaluation of checkpoints on one text set: per-sample measurements, summaries, paired bootstrap, report.

``evaluate.py`` generates and scores (through the training hook and terms); this module turns the scored
samples into numbers and files:

    rec = sample_record(speech_rollout, terms, reward, key, config)   # one per generated sample
    result = analyse(records, checkpoints, temperatures, samples)    # means, spreads, Δ vs the first checkpoint
    write_outputs(result, out_dir)                                    # samples.jsonl, metrics.json, report.md

Pairing: every checkpoint answers the same texts with the same seeds, so sample k of text t at temperature τ
of checkpoint A is paired with the same (t, τ, k) of checkpoint B. Texts are the resampling unit of the
bootstrap (samples of one text are not independent), and every statistic of one resample uses the same texts
for all checkpoints.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jiwer
import numpy as np

from atomicfs import write_text
from reward.config import RewardConfig
from reward.normalize import error_rate, letters
from reward.rate import letters_per_second
from reward.rollout import SpeechRollout, StepContext
from reward.terms import get_term, is_empty, rollout_dnsmos, rollout_speaker_cosine

NORMALIZATIONS = ("project", "seedtts")
ORIGINAL_HANGUP = re.compile(r"(.)\1{5,}")  # the original experiment's hang-up regex on the transcript


# --------------------------------------------------------------------------------------------------------------
# Per sample


@dataclass(frozen=True)
class SampleKey:
    checkpoint: str
    temperature: float
    text_index: int
    sample_index: int  # k-th sample of this text: the same seed for every checkpoint


@dataclass(frozen=True)
class SampleRecord:
    """Everything measured on one generated sample (one line of samples.jsonl)."""

    checkpoint: str
    temperature: float
    text_index: int
    sample_index: int
    text: str  # as prompted (after the data normaliser)
    language: str
    transcript: str  # "" when the transcriber judged the clip silent
    audio: str  # WAV path relative to the output folder
    duration_s: float
    num_codes: int
    text_chars: int  # letters of the normalised text (reward.normalize.letters): numbers spelled out
    finished: bool | None  # ended with end-of-speech
    wer: float
    cer: float
    hangup: bool  # the training term: a character run or a repeated word run in the transcript
    hangup_regex: bool  # the original regex (.)\1{5,} alone
    token_loop: bool | None  # the training term: a short cycle of speech codes (None without codes)
    truncated: bool | None  # no end-of-speech token within max_new_tokens
    empty: bool  # no audio, or judged silent by the transcriber (reward.terms.is_empty, as the `complete` term)
    chars_per_second: float | None  # text_chars / duration_s (reward.rate.letters_per_second, as the
    # speaking_rate term); None without audio
    speaker_similarity: float | None  # cosine to the reference voice ([-1, 1]; 0 if empty); None without one
    reward: float  # the training reward of this config
    terms: dict[str, float | None] = field(default_factory=dict)  # the training terms' values
    # DNSMOS P.835 (1-5) with --dnsmos; None without it or without samples
    dnsmos_sig: float | None = None
    dnsmos_bak: float | None = None
    dnsmos_ovrl: float | None = None

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> SampleRecord:
        return cls(**row)


@lru_cache(maxsize=1)
def _seedtts_punctuation() -> dict[int, None]:
    try:
        from zhon.hanzi import punctuation as hanzi
    except ImportError as e:
        raise ImportError("[eval] --normalization seedtts needs zhon (pip install '.[eval]')") from e
    return str.maketrans("", "", (hanzi + string.punctuation).replace("'", ""))


def seedtts_normalize(text: str, language: str = "en") -> str:
    """As Seed-TTS-eval's run_wer.py: ASCII and Chinese punctuation removed except the apostrophe; Chinese is
    split into characters (its WER is a CER), other languages lower-cased (it defines only en and zh: others
    follow the English rule). Whitespace collapses, as jiwer's default transform does."""
    text = text.translate(_seedtts_punctuation())
    if language.split("-")[0].lower() == "zh":
        return " ".join(ch for ch in text if not ch.isspace())
    return " ".join(text.lower().split())


def seedtts_transcript(text: str, language: str) -> str:
    """run_wer.py converts Paraformer's Chinese output to simplified characters (zhconv, zh-cn) before scoring."""
    if language.split("-")[0].lower() != "zh":
        return text
    try:
        import zhconv
    except ImportError as e:
        raise ImportError("[eval] --normalization seedtts on Chinese rows needs zhconv (pip install '.[eval]')") from e
    return zhconv.convert(text, "zh-cn")


def error_rates(text: str, transcript: str, language: str, normalization: str = "project") -> tuple[float, float]:
    """(WER, CER) of ``transcript`` against ``text``.

    ``project``: the training reward's normalisation (numbers spelled out, lower-cased, punctuation stripped);
    ``seedtts``: Seed-TTS-eval's (``seedtts_normalize``: punctuation stripped, lower-cased, Chinese by character,
    no number spelling). Empty hypothesis: 1.0; empty reference: 0 or 1.
    """
    if normalization == "project":
        return error_rate(text, transcript, language, "wer"), error_rate(text, transcript, language, "cer")
    if normalization != "seedtts":
        raise ValueError(f"[eval] normalization={normalization!r}: use one of {NORMALIZATIONS}")
    ref = seedtts_normalize(text, language)
    hyp = seedtts_normalize(seedtts_transcript(transcript, language), language)
    if not ref or not hyp:
        rate = 0.0 if ref == hyp else 1.0
        return rate, rate
    wer = float(jiwer.wer(ref, hyp))
    if language.split("-")[0].lower() == "zh":  # already over characters (jiwer.cer would count the spaces)
        return wer, wer
    return wer, float(jiwer.cer(ref, hyp))


def sample_record(
    r: SpeechRollout,
    terms: Mapping[str, float | None],
    reward: float,
    key: SampleKey,
    config: RewardConfig,
    *,
    audio_path: str,
    normalization: str = "project",
    speaker_model: str | None = None,
    speaker_device: str = "cpu",
    dnsmos: bool = False,
) -> SampleRecord:
    """Measure one decoded and transcribed sample with the training terms (evaluated here whatever their
    weight in the config, so a rate exists even for a term that training switched off).

    ``speaker_model`` (``reward.speaker``): SIM to the row's reference voice, the plain cosine as papers report it
    (0 for empty or silent audio, which has no voice); None: not measured. ``dnsmos``: DNSMOS SIG/BAK/OVRL
    (shared with the ``dnsmos`` term when training weighted it)."""
    ctx = StepContext(config)

    def term(name: str) -> float | None:  # the training step's value where it computed this term
        return terms[name] if name in terms else get_term(name)(r, ctx)

    wer, cer = error_rates(r.text, r.transcript.text, r.language, normalization)
    loop = term("token_loop")
    chars = letters(r.text, r.language)
    similarity = None
    if speaker_model is not None and r.ref_audio:
        similarity = 0.0 if is_empty(r) else rollout_speaker_cosine(r, speaker_model, speaker_device)
    quality = rollout_dnsmos(r) if dnsmos else None
    return SampleRecord(
        checkpoint=key.checkpoint,
        temperature=key.temperature,
        text_index=key.text_index,
        sample_index=key.sample_index,
        text=r.text,
        language=r.language,
        transcript=r.transcript.text,
        audio=audio_path,
        duration_s=r.duration_s,
        num_codes=0 if r.codes is None else len(r.codes),
        text_chars=chars,
        finished=r.finished,
        wer=wer,
        cer=cer,
        hangup=term("hangup") == 0.0,
        hangup_regex=ORIGINAL_HANGUP.search(r.transcript.text) is not None,
        token_loop=None if loop is None else loop == 0.0,
        truncated=None if r.finished is None else not r.finished,
        empty=is_empty(r),
        chars_per_second=letters_per_second(r.text, r.language, r.duration_s),
        speaker_similarity=similarity,
        reward=float(reward),
        terms=dict(terms),
        dnsmos_sig=None if quality is None else quality.sig,
        dnsmos_bak=None if quality is None else quality.bak,
        dnsmos_ovrl=None if quality is None else quality.ovrl,
    )


# --------------------------------------------------------------------------------------------------------------
# Metrics


@dataclass(frozen=True)
class Metric:
    name: str  # a SampleRecord field
    label: str
    rate: bool  # a 0/1 flag per sample, shown as a percentage
    better: str = "lower"  # "lower" | "higher" | "": which direction is an improvement


METRICS: tuple[Metric, ...] = (
    Metric("wer", "WER", False),
    Metric("cer", "CER", False),
    Metric("hangup", "hang-up rate (char or word runs in the transcript)", True),
    Metric("hangup_regex", "hang-up rate, original regex `(.)\\1{5,}`", True),
    Metric("token_loop", "token-loop rate (speech codes)", True),
    Metric("truncated", "truncation rate (no end-of-speech)", True),
    Metric("empty", "empty/silent rate", True),
    Metric("duration_s", "duration (s)", False, ""),
    Metric("chars_per_second", "speaking rate (letters/s)", False, ""),
    Metric("speaker_similarity", "speaker similarity (SIM, cosine)", False, "higher"),
    Metric("dnsmos_sig", "DNSMOS signal (SIG, 1–5)", False, "higher"),
    Metric("dnsmos_bak", "DNSMOS background (BAK, 1–5)", False, "higher"),
    Metric("dnsmos_ovrl", "DNSMOS overall (OVRL, 1–5)", False, "higher"),
    Metric("reward", "training reward", False, "higher"),
)
SLOPE = Metric("rate_slope", "speaking-rate slope (letters/s per 100 letters of text)", False, "")
FAILURE_RATES = ("token_loop", "truncated", "hangup", "empty")  # plotted against temperature


def metric_value(rec: SampleRecord, name: str) -> float:
    """The record's value as a float; NaN where it does not apply (no codes, no reference, empty audio)."""
    v = getattr(rec, name)
    return math.nan if v is None else float(v)


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float  # spread over samples (population std)
    n: int  # samples with a value
    low: float  # 95 % bootstrap interval of the mean (texts resampled)
    high: float


@dataclass(frozen=True)
class Difference:
    """other − base over paired samples, with a percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    n_pairs: int
    n_texts: int

    @property
    def significant(self) -> bool:
        return not (self.low <= 0.0 <= self.high) if math.isfinite(self.low) else False


@dataclass(frozen=True)
class RateBin:
    low: float  # text length range (letters), inclusive
    high: float
    n_texts: int
    n: int  # samples with a speaking rate
    mean: float
    std: float


@dataclass
class EvalResult:
    checkpoints: dict[str, str]  # name → path, the first is the base of every difference
    temperatures: list[float]
    samples: int
    records: list[SampleRecord]
    overall: dict[str, dict[str, Summary]]  # checkpoint → metric → summary
    by_temperature: dict[str, dict[str, dict[str, Summary]]]  # checkpoint → f"{τ:g}" → metric → summary
    differences: dict[str, dict[str, Difference]]  # checkpoint (not the base) → metric → other − base
    slopes: dict[str, Summary]  # checkpoint → speaking-rate slope (letters/s per 100 letters)
    rate_bins: dict[str, list[RateBin]]  # checkpoint → speaking rate per text-length bin
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return next(iter(self.checkpoints))

    @property
    def metrics(self) -> list[Metric]:
        """The metrics with at least one value (speaker similarity only with references)."""
        return [m for m in METRICS if any(s[m.name].n for s in self.overall.values())]


# --------------------------------------------------------------------------------------------------------------
# Bootstrap over texts


class _Grid:
    """Values of one checkpoint as a [texts, temperatures × samples] matrix (NaN where missing)."""

    def __init__(self, records: Sequence[SampleRecord], texts: list[int], temperatures: list[float], samples: int):
        self.row = {t: i for i, t in enumerate(texts)}
        self.col = {(tau, k): j * samples + k for j, tau in enumerate(temperatures) for k in range(samples)}
        self.shape = (len(texts), len(temperatures) * samples)
        self.records = records

    def matrix(self, name: str, temperature: float | None = None) -> np.ndarray:
        m = np.full(self.shape, np.nan)
        for r in self.records:
            if temperature is None or r.temperature == temperature:
                m[self.row[r.text_index], self.col[(r.temperature, r.sample_index)]] = metric_value(r, name)
        return m


def resample_rows(n_rows: int, resamples: int, seed: int) -> np.ndarray:
    """[1 + B, n_rows] row indices: the identity (point estimate) then B bootstrap resamples of the texts."""
    rng = np.random.default_rng(seed)
    return np.concatenate([np.arange(n_rows)[None], rng.integers(0, n_rows, size=(resamples, n_rows))])


def cluster_mean(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Mean of all non-NaN entries of the rows ``idx[b]`` of ``values`` [T, U], for each b: [B]."""
    ok = ~np.isnan(values)
    sums, counts = np.where(ok, values, 0.0).sum(1), ok.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums[idx].sum(1) / counts[idx].sum(1)


def cluster_slope(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Least-squares slope of y on x over the rows ``idx[b]``: x [T] (one per text), y [T, U]; → [B].

    β = (N Σxy − Σx Σy) / (N Σx² − (Σx)²), summed over every non-NaN (x_t, y_tu) of the chosen rows.
    """
    ok = ~np.isnan(y)
    n = ok.sum(1).astype(float)
    sy = np.where(ok, y, 0.0).sum(1)
    sums = [a[idx].sum(1) for a in (n, x * n, sy, x * sy, x * x * n)]
    big_n, sx, s_y, sxy, sxx = sums
    with np.errstate(invalid="ignore", divide="ignore"):
        den = big_n * sxx - sx * sx
        return np.where(den > 1e-12 * np.maximum(big_n * sxx, 1e-300), (big_n * sxy - sx * s_y) / den, np.nan)


def _interval(stats: np.ndarray, level: float) -> tuple[float, float, float]:
    """(point estimate, low, high) from [1 + B] statistics (the first is the point estimate)."""
    boot = stats[1:][np.isfinite(stats[1:])]
    if not np.isfinite(stats[0]) or boot.size == 0:
        return float(stats[0]), math.nan, math.nan
    alpha = (1.0 - level) / 2
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    return float(stats[0]), float(low), float(high)


def _summary(values: np.ndarray, idx: np.ndarray, level: float) -> Summary:
    flat = values[~np.isnan(values)]
    mean, low, high = _interval(cluster_mean(values, idx), level)
    return Summary(mean, float(flat.std()) if flat.size else math.nan, int(flat.size), low, high)


def paired_difference(base: np.ndarray, other: np.ndarray, idx: np.ndarray, level: float = 0.95) -> Difference:
    """Mean of other − base over pairs where both have a value, texts resampled with ``idx``."""
    d = other - base
    est, low, high = _interval(cluster_mean(d, idx), level)
    return Difference(est, low, high, int((~np.isnan(d)).sum()), int((~np.isnan(d)).any(1).sum()))


def length_bins(lengths: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin edges at quantiles of the texts' lengths (fewer bins when lengths repeat)."""
    edges = np.unique(np.quantile(lengths, np.linspace(0.0, 1.0, n_bins + 1)))
    return edges if edges.size > 1 else np.array([edges[0], edges[0]])


def bin_index(lengths: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each length; bins are [e_i, e_{i+1}) except the last, which includes its upper edge."""
    return np.clip(np.searchsorted(edges, lengths, side="right") - 1, 0, len(edges) - 2)


def analyse(
    records: Sequence[SampleRecord],
    checkpoints: Mapping[str, str],
    temperatures: Sequence[float],
    samples: int,
    *,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    n_bins: int = 5,
    settings: Mapping[str, Any] | None = None,
) -> EvalResult:
    """Summaries per checkpoint (and temperature), differences to the first checkpoint, rate vs length."""
    names = list(checkpoints)
    temps = [float(t) for t in temperatures]
    texts = sorted({r.text_index for r in records})
    if not names or not texts:
        raise ValueError("[eval] nothing to analyse: no checkpoints or no samples")
    chars = {r.text_index: r.text_chars for r in records}
    x = np.array([chars[t] for t in texts], dtype=float)  # [T] text lengths
    idx = resample_rows(len(texts), resamples, seed)
    grids = {c: _Grid([r for r in records if r.checkpoint == c], texts, temps, samples) for c in names}

    overall, by_temp, diffs, slopes, bins = {}, {}, {}, {}, {}
    edges = length_bins(x, n_bins)
    which = bin_index(x, edges)
    for c in names:
        g = grids[c]
        overall[c] = {m.name: _summary(g.matrix(m.name), idx, level) for m in METRICS}
        by_temp[c] = {
            f"{tau:g}": {m.name: _summary(g.matrix(m.name, tau), idx, level) for m in METRICS} for tau in temps
        }
        rate = g.matrix("chars_per_second")
        est, low, high = _interval(100.0 * cluster_slope(x, rate, idx), level)
        slopes[c] = Summary(est, math.nan, int((~np.isnan(rate)).sum()), low, high)
        bins[c] = []
        for b in range(len(edges) - 1):
            vals = rate[which == b]
            flat = vals[~np.isnan(vals)]
            bins[c].append(
                RateBin(
                    float(edges[b]),
                    float(edges[b + 1]),
                    int((which == b).sum()),
                    int(flat.size),
                    float(flat.mean()) if flat.size else math.nan,
                    float(flat.std()) if flat.size else math.nan,
                )
            )
    base = grids[names[0]]
    for c in names[1:]:
        g = grids[c]
        diffs[c] = {m.name: paired_difference(base.matrix(m.name), g.matrix(m.name), idx, level) for m in METRICS}
        rb, rc = base.matrix("chars_per_second"), g.matrix("chars_per_second")
        est, low, high = _interval(100.0 * (cluster_slope(x, rc, idx) - cluster_slope(x, rb, idx)), level)
        diffs[c][SLOPE.name] = Difference(est, low, high, int((~np.isnan(rc - rb)).sum()), len(texts))
    info = {"resamples": resamples, "seed": seed, "level": level, "length_bins": edges.tolist(), **(settings or {})}
    return EvalResult(dict(checkpoints), temps, samples, list(records), overall, by_temp, diffs, slopes, bins, info)


# --------------------------------------------------------------------------------------------------------------
# Files


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf → null, tuples → lists, numpy scalars → Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def metrics_json(result: EvalResult) -> dict[str, Any]:
    return _clean(
        {
            "settings": result.settings,
            "checkpoints": result.checkpoints,
            "base": result.base,
            "temperatures": result.temperatures,
            "samples_per_text": result.samples,
            "overall": {c: {k: asdict(s) for k, s in m.items()} for c, m in result.overall.items()},
            "by_temperature": {
                c: {t: {k: asdict(s) for k, s in m.items()} for t, m in ts.items()}
                for c, ts in result.by_temperature.items()
            },
            "differences": {c: {k: asdict(d) for k, d in m.items()} for c, m in result.differences.items()},
            "rate_slope": {c: asdict(s) for c, s in result.slopes.items()},
            "rate_by_length": {c: [asdict(b) for b in bs] for c, bs in result.rate_bins.items()},
        }
    )


def write_samples(records: Sequence[SampleRecord], path: Path) -> None:
    write_text(path, "".join(json.dumps(_clean(asdict(r)), ensure_ascii=False) + "\n" for r in records))


def read_samples(path: str | Path) -> list[SampleRecord]:
    with Path(path).open(encoding="utf-8") as f:
        return [SampleRecord.from_json(json.loads(line)) for line in f if line.strip()]


def _fmt(value: float, rate: bool, signed: bool = False) -> str:
    if not math.isfinite(value):
        return "–"
    if rate:
        return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f} %"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _cell(s: Summary, m: Metric) -> str:
    if s.n == 0:
        return "–"
    return _fmt(s.mean, True) if m.rate else f"{_fmt(s.mean, False)} ± {_fmt(s.std, False)}"


def _diff_cell(d: Difference, m: Metric) -> str:
    if d.n_pairs == 0:
        return "–"
    unit = " pp" if m.rate else ""
    text = f"{_fmt(d.estimate, m.rate, True)}{unit} [{_fmt(d.low, m.rate, True)}, {_fmt(d.high, m.rate, True)}]"
    return f"**{text}**" if d.significant else text


def report_markdown(result: EvalResult, plots: Mapping[str, str] | None = None) -> str:
    """report.md: settings, the main table (Δ vs the base with 95 % intervals), per temperature, rate vs length."""
    names, base, s = list(result.checkpoints), result.base, result.settings
    others = names[1:]
    level = round(100 * s.get("level", 0.95))
    n_texts = len({r.text_index for r in result.records})
    lines = [
        f"# Evaluation: {' vs '.join(names)}",
        "",
        f"{n_texts} texts × {result.samples} samples at temperature{'s' if len(result.temperatures) > 1 else ''} "
        f"{', '.join(f'{t:.2g}' for t in result.temperatures)}"
        f" per checkpoint, the same seeds for every checkpoint (seed {s.get('seed')}).",
    ]
    for key in ("data", "config", "generation", "transcriber", "normalization", "protocol", "speaker model", "dnsmos"):
        if key in s:
            lines.append(f"- {key}: {s[key]}")
    if s.get("caveats"):  # where the run differs from the protocol it names: read before comparing to a paper
        lines += ["", "**Caveats:**", "", *(f"- {c}" for c in s["caveats"])]
    lines += ["", "| checkpoint | path |", "|---|---|", *(f"| {c} | `{p}` |" for c, p in result.checkpoints.items())]
    header = ["metric", *names, *(f"Δ {c} − {base} [{level} % CI]" for c in others)]
    lines += ["", "## Summary", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in result.metrics:
        row = [m.label, *(_cell(result.overall[c][m.name], m) for c in names)]
        row += [_diff_cell(result.differences[c][m.name], m) for c in others]
        lines.append("| " + " | ".join(row) + " |")
    row = [SLOPE.label, *(_fmt(result.slopes[c].mean, False) for c in names)]
    row += [_diff_cell(result.differences[c][SLOPE.name], SLOPE) for c in others]
    lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        f"Values: mean ± standard deviation over samples; rates in % of samples. Differences: paired by text, "
        f"temperature and sample, {level} % percentile bootstrap over texts ({s.get('resamples')} resamples); "
        "bold where the interval excludes 0 (rates in percentage points).",
        "",
        "## Failure rates by temperature",
        "",
        "| temperature | metric | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for t in result.temperatures:
        for m in (mm for mm in METRICS if mm.name in (*FAILURE_RATES, "wer")):
            cells = [_cell(result.by_temperature[c][f"{t:g}"][m.name], m) for c in names]
            lines.append(f"| {t:g} | {m.label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Speaking rate against text length",
        "",
        "| text length (letters) | texts | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for i, b in enumerate(result.rate_bins[base]):
        cells = [f"{result.rate_bins[c][i].mean:.2f}" if result.rate_bins[c][i].n else "–" for c in names]
        lines.append(f"| {b.low:g}–{b.high:g} | {b.n_texts} | " + " | ".join(cells) + " |")
    lines.append(
        "| slope per 100 letters | | "
        + " | ".join(
            f"{_fmt(result.slopes[c].mean, False)} [{_fmt(result.slopes[c].low, False)}, "
            f"{_fmt(result.slopes[c].high, False)}]"
            for c in names
        )
        + " |"
    )
    lines += ["", "A positive slope: longer texts are spoken faster (the exploit the original run found)."]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{title}]({path})" for title, path in plots.items()]
    lines += ["", "Per-sample audio, transcripts and flags: `samples.jsonl` and `audio/`; all numbers: `metrics.json`."]
    return "\n".join(lines) + "\n"


def write_outputs(
    result: EvalResult, out_dir: str | Path, plot: Callable[[EvalResult, Path], dict[str, str]] | None = None
) -> dict[str, Path]:
    """samples.jsonl, metrics.json, the plots (``plot(result, out_dir)`` → title: file name) and report.md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_samples(result.records, out / "samples.jsonl")
    write_text(out / "metrics.json", json.dumps(metrics_json(result), indent=1, ensure_ascii=False) + "\n")
    plots = plot(result, out) if plot else {}
    write_text(out / "report.md", report_markdown(result, plots))
    return {"report": out / "report.md", "metrics": out / "metrics.json", "samples": out / "samples.jsonl"}
