"""Pure reward terms, normalisation and combination (no ASR; one espeak clip for the audio-level term)."""

import math

import numpy as np
import pytest

from llasa_grpo import recipe
from reward.asr.transcript import Transcript
from reward.combine import active_terms, combine
from reward.config import RewardConfig, TranscriberConfig
from reward.normalize import error_rate, letters, normalize
from reward.rate import letters_per_second, reference_rate_band
from reward.rollout import SpeechRollout, StepContext
from reward.terms import TERMS, get_term, longest_code_cycle, max_consecutive_repeats, resolve_terms
from tests import speech_fixtures as sf
from tomlconfig import ConfigError, FieldError, from_dict

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


def test_thousands_separators_and_decimal_marks_per_language():
    assert normalize("1,000", "en") == "one thousand"  # not 1.0 → "one"
    assert normalize("1,000,000 people", "en") == "one million people"
    assert normalize("1.000", "de") == "eintausend"  # not "eins"
    assert normalize("1.000.000 Leute", "de-DE") == "eine million leute"
    assert normalize("3,5", "de") == "drei komma fünf"
    assert normalize("3.5", "en") == "three point five"
    assert normalize("1,000.5", "en") == normalize("1000.5", "en") == "one thousand point five"
    assert normalize("1.000,5", "de") == "eintausend komma fünf"
    assert normalize("um 8.30 Uhr", "de") == "um acht dreißig uhr"  # '.' is no decimal mark in German
    assert error_rate("Es kostet 1.000 Euro.", "es kostet tausend euro", "de") == pytest.approx(0.25)
    assert error_rate("It costs 1,000 dollars.", "it costs one thousand dollars", "en") == 0.0


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


def test_hangup_ignores_digit_and_punctuation_runs_and_runs_the_text_has():
    term = get_term("hangup")
    # correct transcripts that the original regex `(.)\1{5,}` flags
    assert term(rollout(text="Eine Million: 1000000 Euro.", said="Eine Million: 1000000 Euro."), CTX) == 1.0
    assert term(rollout(text="Warte ... und dann", said="Warte...... und dann"), CTX) == 1.0
    assert term(rollout(text="Er rief Aaaaaaah!", said="Er rief Aaaaaaah!"), CTX) == 1.0  # the text has the run
    assert term(rollout(text="Er rief Aaaaaaah!", said="Er rief Aaaaaaaaaaaaaaah!"), CTX) == 0.0  # longer: stutter
    assert term(rollout(said="Der Zug nach Mmmmmmmünchen"), CTX) == 0.0  # case-insensitive, like the word rule


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
    # digits count as the words they are spoken as: "3" is "drei" (4 letters), also in evaluation's rate
    assert letters_per_second("Er hat 3 Bücher.", "de", 1.0) == len("erhatdreibücher")
    r = rollout(text="Er hat 3 Bücher.", seconds=len("erhatdreibücher") / 17)
    assert term(r, StepContext(RewardConfig(), rate_band=(16.9, 17.1))) == 1.0
    with pytest.raises(ValueError, match=r"speaking-rate band=\(12\.0, 12\.0\): need 0 < low < high"):
        StepContext(RewardConfig(), rate_band=(12.0, 12.0))


def test_rate_band_from_references_needs_enough_clips():
    cfg = RewardConfig(rate_band=(9.0, 17.0), rate_min_references=5)
    one_voice = [("Zwölf Boxkämpfer jagen Viktor.", "de", 2.0)]  # 26 letters / 2 s: percentiles would be (13, 13)
    assert reference_rate_band(one_voice, cfg)[0] == (9.0, 17.0)
    refs = [("Er hat 3 Bücher.", "de", len("erhatdreibücher") / rate) for rate in (10, 11, 12, 13, 14, 15)]
    (lo, hi), where = reference_rate_band(refs, cfg)
    assert (lo, hi) == pytest.approx(tuple(np.percentile([10, 11, 12, 13, 14, 15], [5, 95])))
    assert "6 reference clips" in where
    with pytest.raises(ValueError, match=r"6 reference clips.*need 0 < low < high.*rate_min_references"):
        reference_rate_band([one_voice[0]] * 6, cfg)


def test_complete_silence_and_finish():
    term = get_term("complete")
    assert term(rollout(finished=True), CTX) == 1.0
    assert term(rollout(finished=False), CTX) == 0.0
    assert term(rollout(finished=None), CTX) is None
    assert term(rollout(finished=True, transcript=Transcript("", silent=True)), CTX) == 0.0
    assert term(rollout(finished=True, audio=np.zeros(0, np.float32)), CTX) == 0.0
    # without a voice the speaker similarity is 0, not "not applicable" (None would drop the term and raise the
    # reward of an empty clip to the mean of the others)
    sim = get_term("speaker_similarity")
    assert sim(rollout(ref_audio="ref.wav", audio=np.zeros(0, np.float32)), CTX) == 0.0
    assert sim(rollout(ref_audio="ref.wav", transcript=Transcript("", silent=True)), CTX) == 0.0
    assert sim(rollout(), CTX) is None  # no reference voice


def test_combination_weighted_mean_skips_none_and_gates_scale():
    cfg = RewardConfig(weights={"wer": 1.0, "hangup": 3.0, "complete": 1.0}, gates={"token_loop": 0.5}, gate_floor=0.2)
    assert active_terms(cfg) == ["wer", "hangup", "complete", "token_loop"]
    assert combine({"wer": 1.0, "hangup": 0.5, "complete": None, "token_loop": 1.0}, cfg) == (
        pytest.approx(2.5 / 4),
        False,
    )
    total, gated = combine({"wer": 1.0, "hangup": 0.5, "complete": None, "token_loop": 0.0}, cfg)
    assert gated and total == pytest.approx(0.2 * 2.5 / 4)
    assert combine({"wer": None, "hangup": None, "token_loop": None}, cfg) == (0.0, False)


def test_registry_and_config_errors_name_the_field(tmp_path):
    assert {"wer", "hangup", "token_loop", "audio_repeat", "speaking_rate", "complete"} <= set(TERMS)
    with pytest.raises(KeyError, match="unknown term 'nope'"):
        get_term("nope")
    with pytest.raises(ValueError, match="wer_variant: expected one of 'wer', 'cer'"):
        from_dict(RewardConfig, {"wer_variant": "per"})  # Literal fields: checked by the loader
    with pytest.raises(ValueError, match="rate_band"):
        RewardConfig(rate_band=(20.0, 10.0))
    with pytest.raises(ValueError, match="backend: expected one of 'whisper', 'http'"):
        from_dict(TranscriberConfig, {"backend": "grpc"})
    # term names are checked where they are resolved, naming the field
    with pytest.raises(FieldError, match=r"weights\.speling_rate=1\.0: unknown reward term; known terms: .*wer"):
        resolve_terms(RewardConfig(weights={"wer": 1.0, "speling_rate": 1.0}))
    with pytest.raises(FieldError, match=r"gates\.nope"):
        resolve_terms(RewardConfig(gates={"nope": 0.5}))
    assert list(resolve_terms(RewardConfig())) == active_terms(RewardConfig())
    for bad, key in (
        ({"rate_tolerance": 0.0}, "rate_tolerance"),
        ({"repeat_scale_s": -1.0}, "repeat_scale_s"),
        ({"hangup_char_run": 1}, "hangup_char_run"),
        ({"weights": {"wer": 0.0, "hangup": 0.0}}, "weights"),
        ({"gates": {"complete": 1.5}}, "gates.complete"),
    ):
        with pytest.raises(FieldError) as e:
            RewardConfig(**bad)
        assert e.value.key == key
    # ... and the recipe's root config resolves them when it loads, before any model loads
    path = tmp_path / "r.toml"
    path.write_text("[data]\npath = 'x.jsonl'\n[reward.weights]\nwer = 1.0\nspeking_rate = 1.0\n")
    with pytest.raises(ConfigError, match=r"r\.toml: reward\.weights\.speking_rate=1\.0: unknown reward term"):
        recipe.load(path)


def test_audio_repeat_catches_a_hangup_on_real_speech(tmp_path):
    sf.require_speech_tools()
    clean = sf.synthesize("Der kleine Hund spielt gern im großen Garten.", "de", tmp_path, "x")
    term = get_term("audio_repeat")
    assert term(rollout(audio=clean), CTX) == 1.0
    assert term(rollout(audio=sf.hangup(clean)), CTX) < 0.05  # ~2 s of a 100 ms loop
    assert term(rollout(audio=sf.hangup(clean, segment_s=0.04, repeats=50)), CTX) < 0.05
    assert term(rollout(audio=np.zeros_like(clean)), CTX) == 1.0  # silence is not a loop
