"""Pure reward terms, normalisation and combination (no ASR; one espeak clip for the audio-level term)."""

import math

import numpy as np
import pytest

from reward.combine import active_terms, combine
from reward.config import RewardConfig, TranscriberConfig
from reward.normalize import error_rate, letters, normalize
from reward.rollout import SpeechRollout, StepContext
from reward.terms import TERMS, get_term, longest_code_cycle, max_consecutive_repeats
from reward.transcribe import Transcript
from tests import speech_fixtures as sf

CTX = StepContext(RewardConfig())


def rollout(text="Der Zug fährt um 8 Uhr ab.", said=None, language="de", seconds=2.0, **kw) -> SpeechRollout:
    audio = kw.pop("audio", np.full(int(seconds * 16000), 0.1, dtype=np.float32))
    transcript = kw.pop("transcript", Transcript(text=text if said is None else said))
    return SpeechRollout(text, language, audio, len(audio) / 16000, transcript, **kw)


def test_numbers_are_spelled_out_on_both_sides():
    assert normalize("Um 8 Uhr, bitte!", "de") == "um acht uhr bitte"
    assert normalize("at 8.", "en") == "at eight"
    assert error_rate("Der Zug fährt um 8 Uhr ab.", "der Zug fährt um acht Uhr ab", "de") == 0.0
    assert error_rate("a b c d", "a x c", "en") == pytest.approx(0.5)  # one substitution, one deletion
    assert error_rate("a b", "", "en") == 1.0
    assert error_rate("Altenhafen", "alten Hafen", "de", "cer") == pytest.approx(0.1)
    assert letters("um 8 Uhr", "de") == len("umachtuhr")


def test_wer_term_is_exp_minus_wer_and_cer_variant():
    assert get_term("wer")(rollout(said="der zug fährt um acht uhr ab"), CTX) == 1.0
    r = rollout(text="eins zwei drei vier", said="eins zwei drei")
    assert get_term("wer")(r, CTX) == pytest.approx(math.exp(-0.25))
    cer = StepContext(RewardConfig(wer_variant="cer"))
    assert get_term("wer")(rollout(text="Altenhafen", said="alten Hafen"), cer) == pytest.approx(math.exp(-0.1))


def test_hangup_character_run_and_word_run():
    term = get_term("hangup")
    assert term(rollout(said="Der Zug fährt um acht Uhr ab."), CTX) == 1.0
    assert term(rollout(said="Der Zug nach Feeeeeeeee"), CTX) == 0.0  # the original regex
    assert term(rollout(said="Der Zug nach Feeeee"), CTX) == 1.0  # five in a row is below the threshold
    assert term(rollout(said="over the old ha ha ha ha"), CTX) == 0.0
    stutter = "meiner Schwester wohnt mit meiner Schwester wohnt mit meiner Schwester wohnt mit"  # seen from Whisper
    assert term(rollout(said=stutter), CTX) == 0.0
    assert term(rollout(said=stutter.rsplit(" ", 5)[0]), CTX) == 1.0  # two repeats are not enough
    # repetition the text itself asks for is not a hang-up
    assert term(rollout(text="ha ha ha", said="ha ha ha", language="en"), CTX) == 1.0
    assert max_consecutive_repeats("a b a b a b c".split()) == 3


def test_token_loop_finds_cycles_in_codes_only():
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 65536, 200)
    looped = np.concatenate([clean[:50], np.tile([111, 222, 333], 12), clean[50:]])
    assert longest_code_cycle(looped, 8) == (3, 36)
    term = get_term("token_loop")
    assert term(rollout(codes=looped), CTX) == 0.0
    assert term(rollout(codes=clean), CTX) == 1.0
    assert term(rollout(codes=np.concatenate([clean, [7] * 10, clean])), CTX) == 1.0  # 0.2 s constant pause
    assert term(rollout(codes=None), CTX) is None  # audio file: not applicable


def test_speaking_rate_band():
    term = get_term("speaking_rate")
    text = "Der kleine Hund spielt gern im großen Garten."  # 37 letters
    assert term(rollout(text=text, seconds=37 / 13), CTX) == 1.0
    too_fast, too_slow = term(rollout(text=text, seconds=37 / 20), CTX), term(rollout(text=text, seconds=37 / 6), CTX)
    assert too_fast == pytest.approx(math.exp(-((math.log(20 / 17) / 0.15) ** 2)))
    assert too_slow < 0.1 and too_fast < 0.5
    assert term(rollout(text=text, seconds=37 / 20), StepContext(RewardConfig(), rate_band=(10, 25))) == 1.0


def test_complete_silence_and_finish():
    term = get_term("complete")
    assert term(rollout(finished=True), CTX) == 1.0
    assert term(rollout(finished=False), CTX) == 0.0
    assert term(rollout(finished=None), CTX) is None
    assert term(rollout(finished=True, transcript=Transcript("", silent=True)), CTX) == 0.0
    assert term(rollout(finished=True, audio=np.zeros(16000, np.float32)), CTX) == 0.0
    assert term(rollout(finished=True, audio=np.zeros(0, np.float32)), CTX) == 0.0


def test_combination_weighted_mean_skips_none_and_gates_scale():
    cfg = RewardConfig(weights={"a": 1.0, "b": 3.0, "c": 1.0}, gates={"g": 0.5}, gate_floor=0.2)
    assert active_terms(cfg) == ["a", "b", "c", "g"]
    assert combine({"a": 1.0, "b": 0.5, "c": None, "g": 1.0}, cfg) == (pytest.approx(2.5 / 4), False)
    total, gated = combine({"a": 1.0, "b": 0.5, "c": None, "g": 0.0}, cfg)
    assert gated and total == pytest.approx(0.2 * 2.5 / 4)
    assert combine({"a": None, "b": None, "g": None}, cfg) == (0.0, False)


def test_registry_and_config_errors_name_the_field():
    assert {"wer", "hangup", "token_loop", "audio_repeat", "speaking_rate", "complete"} <= set(TERMS)
    with pytest.raises(KeyError, match="unknown term 'nope'"):
        get_term("nope")
    with pytest.raises(ValueError, match="wer_variant"):
        RewardConfig(wer_variant="per")
    with pytest.raises(ValueError, match="rate_band"):
        RewardConfig(rate_band=(20.0, 10.0))
    with pytest.raises(ValueError, match="backend"):
        TranscriberConfig(backend="grpc")


def test_audio_repeat_catches_a_hangup_on_real_speech(tmp_path):
    sf.require_speech_tools()
    clean = sf.synthesize("Der kleine Hund spielt gern im großen Garten.", "de", tmp_path, "x")
    term = get_term("audio_repeat")
    assert term(rollout(audio=clean), CTX) == 1.0
    assert term(rollout(audio=sf.hangup(clean)), CTX) < 0.05  # ~2 s of a 100 ms loop
    assert term(rollout(audio=sf.hangup(clean, segment_s=0.04, repeats=50)), CTX) < 0.05
    assert term(rollout(audio=np.zeros_like(clean)), CTX) == 1.0  # silence is not a loop
