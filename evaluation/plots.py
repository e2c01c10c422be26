"""PNG plots of an evaluation (matplotlib's Agg canvas directly: no pyplot, no global backend, no display).

speaking_rate_vs_length.png   letters/s against text length per checkpoint: samples, bin means, fitted line
wer_distribution.png          WER histogram per checkpoint
failure_rates_by_temperature.png   token-loop, truncation, hang-up and empty rates against temperature
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from atomicfs import atomic_path
from evaluation.report import FAILURE_RATES, METRICS, EvalResult, metric_value

_LABELS = {m.name: m.label for m in METRICS}


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".") or "png")


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def plot_rate_vs_length(result: EvalResult, path: Path) -> None:
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)  # horizontal jitter only, so overlapping samples stay visible
    for k, (name, color) in enumerate(zip(result.checkpoints, _colors(len(result.checkpoints)), strict=True)):
        recs = [r for r in result.records if r.checkpoint == name and r.chars_per_second is not None]
        x = np.array([r.text_chars for r in recs], dtype=float)
        y = np.array([r.chars_per_second for r in recs], dtype=float)
        ax.scatter(x + rng.uniform(-0.6, 0.6, x.size), y, s=10, alpha=0.35, color=color)
        bins = [b for b in result.rate_bins[name] if b.n]
        slope = result.slopes[name].mean
        ax.errorbar(
            [(b.low + b.high) / 2 + 0.4 * k for b in bins],
            [b.mean for b in bins],
            yerr=[b.std for b in bins],
            marker="o",
            capsize=3,
            color=color,
            label=f"{name} (slope {slope:+.2f} per 100 letters)" if np.isfinite(slope) else name,
        )
    rates = [r.chars_per_second for r in result.records if r.chars_per_second]
    if rates and np.percentile(rates, 95) > 5 * np.percentile(rates, 5):
        ax.set_yscale("log")  # a model that stops or runs on spreads rates over decades
    ax.set_xlabel("text length (letters, numbers spelled out)")
    ax.set_ylabel("speaking rate (letters / s)")
    ax.set_title("Speaking rate against text length")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_wer_distribution(result: EvalResult, path: Path) -> None:
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    values = {c: [metric_value(r, "wer") for r in result.records if r.checkpoint == c] for c in result.checkpoints}
    top = max(1.0, *(max(v, default=0.0) for v in values.values()))
    edges = np.linspace(0.0, top, 21)
    for (name, vals), color in zip(values.items(), _colors(len(values)), strict=True):
        ax.hist(vals, bins=edges, histtype="step", linewidth=2, color=color, label=f"{name} (mean {np.mean(vals):.2f})")
    ax.set_xlabel("WER per sample")
    ax.set_ylabel("samples")
    ax.set_title("WER distribution")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_rates_by_temperature(result: EvalResult, path: Path) -> None:
    fig = Figure(figsize=(8.0, 5.2), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True).ravel()
    temps = np.array(result.temperatures)
    span = float(temps.max() - temps.min()) or 0.2
    n = len(result.checkpoints)
    for ax, name in zip(axes, FAILURE_RATES, strict=True):
        for k, (ckpt, color) in enumerate(zip(result.checkpoints, _colors(n), strict=True)):
            rates = [100 * result.by_temperature[ckpt][f"{t:g}"][name].mean for t in temps]
            shift = 0.02 * span * (k - (n - 1) / 2)  # side by side, so equal rates stay visible
            ax.plot(temps + shift, rates, marker="o", color=color, label=ckpt)
        ax.set_title(_LABELS[name], fontsize=9)
        ax.set_ylim(-5, 105)
        ax.set_xlim(temps.min() - 0.25 * span, temps.max() + 0.25 * span)
        ax.set_xticks(temps)
        ax.grid(alpha=0.3)
    for ax in axes[2:]:
        ax.set_xlabel("temperature")
    for ax in axes[::2]:
        ax.set_ylabel("% of samples")
    axes[0].legend(fontsize=8)
    fig.suptitle("Failure rates by sampling temperature")
    _save(fig, path)


def write_plots(result: EvalResult, out_dir: Path) -> dict[str, str]:
    """All plots into ``out_dir``; returns title → file name (for report.md)."""
    plots = {
        "speaking rate vs text length": ("speaking_rate_vs_length.png", plot_rate_vs_length),
        "WER distribution": ("wer_distribution.png", plot_wer_distribution),
        "failure rates by temperature": ("failure_rates_by_temperature.png", plot_rates_by_temperature),
    }
    for file, fn in plots.values():
        fn(result, Path(out_dir) / file)
    return {title: file for title, (file, _) in plots.items()}
