"""``[reward] preset = "original"``: the seed experiment's (exp(−WER) + hangup)/2, against hand-computed values."""

import math

import numpy as np
import pytest

from reward.asr.transcript import Transcript
from reward.combine import combine
from reward.config import RewardConfig
from reward.rollout import SpeechRollout, StepContext
from reward.terms import resolve_terms
from tomlconfig import ConfigError, FieldError, from_dict

ORIGINAL = RewardConfig(preset="original")


def rollout(text: str, said: str) -> SpeechRollout:
    audio = np.full(32000, 0.1, dtype=np.float32)
    return SpeechRollout(text, "en", audio, 2.0, Transcript(text=said))


def score(r: SpeechRollout, cfg: RewardConfig) -> tuple[dict[str, float | None], float, bool]:
    """The scorer's own path: every active term, then the combination."""
    values = {name: fn(r, StepContext(cfg)) for name, fn in resolve_terms(cfg).items()}
    return values, *combine(values, cfg)


@pytest.mark.parametrize(
    ("text", "said", "expected"),
    [
        # lower-case and ". , ? !" stripped on both sides: identical -> (e^0 + 1)/2
        ("Where is the cat?", "where is the cat", 1.0),
        # numbers are NOT spelled out: "8" vs "eight" is 1 substitution in 7 words; the apostrophe stays
        ("The train leaves at 8, doesn't it?", "The train leaves at eight, doesn't it?", (math.exp(-1 / 7) + 1) / 2),
        # (.)\1{5,} on the raw transcript: six o's is a hang-up; WER 2 subs + 0 of 3 words -> e^(-2/3)
        ("No, thank you.", "Noooooo thenk you", (math.exp(-2 / 3) + 0) / 2),
        # five of a kind is no hang-up; "......" is (six dots) — the regex does not care what repeats
        ("Wait.", "Waaaaait", (math.exp(-1) + 1) / 2),
        ("Wait.", "Wait......", (1 + 0) / 2),
        # nothing heard: all deletions
        ("One two three.", "", (math.exp(-1) + 1) / 2),
    ],
)
def test_original_reward_by_hand(text: str, said: str, expected: float) -> None:
    values, total, gated = score(rollout(text, said), ORIGINAL)
    assert set(values) == {"wer_original", "hangup_original"}
    assert total == pytest.approx(expected, abs=1e-6)
    assert not gated


def test_original_preset_fixes_its_terms_and_differs_from_the_default() -> None:
    assert ORIGINAL.weights == {"wer_original": 1.0, "hangup_original": 1.0} and ORIGINAL.gates == {}
    r = rollout("The train leaves at 8.", "The train leaves at eight.")
    default = score(r, RewardConfig())[0]["wer"]
    assert default == 1.0  # the project's normalisation spells numbers out
    assert combine({"wer_original": math.exp(-0.2), "hangup_original": 1.0}, ORIGINAL)[0] == pytest.approx(
        (math.exp(-0.2) + 1) / 2
    )
    with pytest.raises(FieldError, match="preset"):
        RewardConfig(preset="original", weights={"wer": 1.0})
    with pytest.raises(ConfigError, match="preset"):
        from_dict(RewardConfig, {"preset": "seed"})
