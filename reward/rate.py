"""Speaking rate in one unit everywhere: letters per second, where letters are counted on the normalised text;
and the pauses the data's reference clips allow.

``letters(normalize(text))`` spells numbers out ("3" → "drei") and drops spaces and punctuation, so "um 8 Uhr"
and "um acht Uhr" take the same time to say and count the same. The reward term, the band derived from the
data's reference clips, and evaluation's ``chars_per_second`` all use ``letters_per_second``. The reward term
and the references' band divide by the seconds of speech (``reward.audio_features.SpeechActivity.speech_s``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from reward.config import RewardConfig, check_rate_band
from reward.normalize import letters
from reward.rollout import PauseLimits

if TYPE_CHECKING:  # audio_features needs the codec's constants; StepContext (which imports this) does not
    from reward.audio_features import SpeechActivity

PERCENTILES = (5.0, 95.0)  # the band of the references' rates


def letters_per_second(text: str, language: str, seconds: float) -> float | None:
    """ρ = letters(normalize(text, language)) / seconds; None without audio."""
    return letters(text, language) / seconds if seconds > 0 else None


def reference_rate_band(
    references: Iterable[tuple[str, str, float]], config: RewardConfig
) -> tuple[tuple[float, float], str]:
    """(band, where it came from) for the ``speaking_rate`` term from (text, language, seconds) of reference clips.

    With at least ``config.rate_min_references`` clips: the 5th-95th percentile of their rates. Fewer (one
    clip for cloning a single voice collapses the percentiles to one point): ``config.rate_band``.
    """
    rates = [r for text, language, seconds in references if (r := letters_per_second(text, language, seconds))]
    if len(rates) < config.rate_min_references:
        return config.rate_band, f"reward.rate_band (only {len(rates)} reference clips)"
    lo, hi = np.percentile(np.asarray(rates, dtype=np.float64), PERCENTILES)
    where = f"the speaking-rate band of {len(rates)} reference clips"
    try:
        return check_rate_band((float(lo), float(hi)), where), where
    except ValueError as e:
        raise ValueError(f"{e}; raise reward.rate_min_references above {len(rates)} to use reward.rate_band") from None


def reference_pause_limits(activities: Sequence[SpeechActivity], config: RewardConfig) -> tuple[PauseLimits, str]:
    """(limits, where they came from): the 95th percentile of each measurement over the reference clips when
    there are at least ``config.rate_min_references`` of them (the same rule as the rate band), else the config.
    A reference set recorded with long pauses allows long pauses; clipped studio takes allow little."""
    if len(activities) < config.rate_min_references:
        return PauseLimits.from_config(config), f"reward.pause_* (only {len(activities)} reference clips)"
    hi = PERCENTILES[1]
    limits = PauseLimits(
        leading_s=float(np.percentile([a.leading_s for a in activities], hi)),
        trailing_s=float(np.percentile([a.trailing_s for a in activities], hi)),
        longest_s=float(np.percentile([a.longest_pause_s for a in activities], hi)),
        share=float(np.percentile([a.pause_share for a in activities], hi)),
    )
    return limits, f"the pauses of {len(activities)} reference clips"
