"""Pure reward terms, normalisation and combination (no ASR; one espeak clip for the audio-level term)."""

import math
from pathlib import Path

import numpy as np
import pytest

from llasa_grpo import recipe
from reward import terms as terms_module
from reward.asr.transcript import Transcript
from reward.audio_features import repeated_seconds, speech_activity
from reward.combine import active_terms, combine
from reward.config import RewardConfig, TranscriberConfig
from reward.normalize import error_rate, letters, normalize
from reward.rate import letters_per_second, reference_pause_limits, reference_rate_band
from reward.rollout import PauseLimits, SpeechRollout, StepContext
from reward.scorer import SpeechScorer
from reward.terms import TERMS, get_term, longest_code_cycle, max_consecutive_repeats, resolve_terms
from tests import speech_fixtures as sf
from tomlconfig import ConfigError, FieldError, from_dict

CTX = StepContext(RewardConfig())
TINY = Path(__file__).resolve().parents[1] / "tiny.toml"


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


def test_a_number_too_large_to_spell_reads_digit_by_digit():
    """Whisper transcribed a lab sample as "564" and hundreds of zeros; num2words raised OverflowError, which
    stopped a training run. Read digit by digit, it is just a very wrong transcript."""
    assert normalize("564" + "0" * 400, "en") == " ".join(["five", "six", "four"] + ["zero"] * 400)
    assert normalize("5" * 400 + ",5", "de").split()[-3:] == ["fünf", "fünf", "fünf"]
    assert normalize("564" + "0" * 3, "en") == "five hundred and sixty four thousand"  # in range: unchanged
    # 9 reference words ("... five hundred and sixty four"), at least 400 inserted
    assert error_rate("My room number is 564.", "my room number is 564" + "0" * 400, "en") >= 400 / 9


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
    too_fast, too_slow = term(rollout(text=text, seconds=37 / 24), CTX), term(rollout(text=text, seconds=37 / 6), CTX)
    assert too_fast == pytest.approx(math.exp(-((math.log(24 / 20) / 0.1) ** 2)), rel=1e-2)
    assert too_slow < 0.1 and too_fast < 0.5
    assert term(rollout(text=text, seconds=37 / 24), StepContext(RewardConfig(), rate_band=(10, 25))) == 1.0
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


def _speech(*parts: tuple[str, float]) -> np.ndarray:
    """A clip of ("tone" | "zeros", seconds) parts: a 220 Hz tone at -20 dBFS stands for speech."""
    out = []
    for kind, seconds in parts:
        t = np.arange(round(seconds * 16000)) / 16000
        out.append(0.14 * np.sin(2 * np.pi * 220 * t) if kind == "tone" else np.zeros_like(t))
    return np.concatenate(out).astype(np.float32)


def test_speaking_rate_is_measured_on_speech_so_padding_cannot_fake_a_slow_rate():
    term = get_term("speaking_rate")
    text = "Der kleine Hund spielt gern im großen Garten."  # 37 letters
    speech = _speech(("tone", 37 / 21))  # 21 letters/s: too fast for the default band (10, 20)
    fast = term(rollout(text=text, audio=speech), CTX)
    assert fast < 0.9
    # 3 s of padding would make the whole clip 7.7 letters/s (slow); the speech is as fast as before
    for padded in (_speech(("zeros", 3.0)), _speech(("tone", 0.0), ("zeros", 3.0))):
        audio = np.concatenate([padded, speech]) if len(padded) > 40000 else np.concatenate([speech, padded])
        assert term(rollout(text=text, audio=audio), CTX) == pytest.approx(fast, abs=0.02)


def test_pauses_term_counts_seconds_beyond_the_allowances():
    term = get_term("pauses")
    cfg = RewardConfig()  # leading/trailing 0.5 s, longest internal pause 0.8 s, internal share 0.3, scale 0.5 s
    assert term(rollout(audio=_speech(("zeros", 0.2), ("tone", 2.0), ("zeros", 0.3))), CTX) == 1.0
    assert term(rollout(audio=_speech(("zeros", 1.5), ("tone", 2.0))), CTX) == pytest.approx(math.exp(-2.0), rel=0.02)
    assert term(rollout(audio=_speech(("tone", 2.0), ("zeros", 3.5))), CTX) == pytest.approx(math.exp(-6.0), rel=0.02)
    # a 1.2 s pause inside 2 × 1 s of speech: 0.4 s over the longest allowed, and 1.2 − 0.3 · 3.2 s over the share
    inside = rollout(audio=_speech(("tone", 1.0), ("zeros", 1.2), ("tone", 1.0)))
    assert term(inside, CTX) == pytest.approx(math.exp(-(0.4 + 1.2 - cfg.pause_share * 3.2) / 0.5), rel=0.02)
    # stop closures (shorter than pause_min_s) are part of the speech, not pauses
    closures = _speech(*[part for _ in range(8) for part in (("tone", 0.2), ("zeros", 0.08))])
    assert speech_activity(closures, cfg.pause_below_peak_db, cfg.pause_min_s, cfg.floor_dbfs).pause_s == 0.0
    assert term(rollout(audio=closures), CTX) == 1.0
    # a faint noise floor (-66 dBFS, 46 dB under the speech) is no speech: it counts like digital zeros
    noise = (5e-4 * np.random.default_rng(0).standard_normal(16000 * 2)).astype(np.float32)
    floor = rollout(audio=np.concatenate([_speech(("tone", 2.0)), noise]))
    assert term(floor, CTX) == pytest.approx(math.exp(-3.0), rel=0.02)
    # the data's references allow more; no speech at all scores 0
    loose = StepContext(cfg, pause_limits=PauseLimits(leading_s=2.0, trailing_s=2.0, longest_s=1.5, share=0.5))
    assert term(rollout(audio=_speech(("zeros", 1.5), ("tone", 2.0))), loose) == 1.0
    assert term(rollout(audio=np.zeros(32000, np.float32)), CTX) == 0.0


def test_pause_limits_come_from_enough_reference_clips():
    cfg = RewardConfig(rate_min_references=5)
    clips = [_speech(("zeros", lead), ("tone", 1.5), ("zeros", 0.6), ("tone", 1.0)) for lead in (0.1, 0.2, 0.3)]
    acts = [speech_activity(c, cfg.pause_below_peak_db, cfg.pause_min_s, cfg.floor_dbfs) for c in clips]
    assert reference_pause_limits(acts, cfg)[0] == PauseLimits.from_config(cfg)  # 3 < 5 clips
    limits, where = reference_pause_limits(acts * 2, cfg)
    assert "6 reference clips" in where
    assert limits.leading_s == pytest.approx(np.percentile([0.1, 0.2, 0.3] * 2, 95), abs=0.011)
    assert limits.longest_s == pytest.approx(0.6, abs=0.011) and limits.trailing_s == pytest.approx(0.0, abs=0.011)


def test_wer_is_computed_once_per_rollout(monkeypatch):
    calls = []

    def counting(*args):
        calls.append(args[-1])
        return error_rate(*args)

    monkeypatch.setattr(terms_module, "error_rate", counting)

    def judge(speech, config=None):  # the scorer's own path, with the hook's result given
        return SpeechScorer(lambda _batch, _timings: speech, config).judge(None)

    speech = [rollout(said="der zug fährt"), rollout(said="der zug fährt um acht uhr ab")]
    scored = judge(speech)
    assert calls == ["wer", "wer"]  # the wer term and the asr/wer metric share one computation
    assert scored[0].wer == pytest.approx(4 / 7) and scored[0].terms["wer"] == pytest.approx(math.exp(-4 / 7))
    calls.clear()
    judge([rollout(said="der zug fährt")], RewardConfig(wer_variant="cer"))
    assert sorted(calls) == ["cer", "wer"]  # two different measures, each once


def test_repetition_finds_soft_loops_and_stutters_and_spares_long_steady_words(tmp_path):
    sf.require_speech_tools()
    cfg = RewardConfig()

    def seconds(audio):
        return repeated_seconds(
            audio,
            cfg.repeat_min_lag_s,
            cfg.repeat_max_lag_s,
            cfg.repeat_similarity,
            cfg.repeat_min_s,
            cfg.repeat_chain_min_s,
            cfg.repeat_chain_copies,
            cfg.floor_dbfs,
        )

    clean = sf.synthesize("Sieben Schwäne schwimmen still über das Wasser.", "de", tmp_path, "s")
    steady = sf.synthesize("Hmm, die Donaudampfschifffahrtsgesellschaft.", "de", tmp_path, "h")
    assert seconds(clean) == 0.0 and seconds(steady) == 0.0
    soft = sf.loop(clean, 0.1, "soft", 20)  # the quietest non-silent 100 ms, 20 times: ~2 s
    assert 1.5 <= seconds(soft) <= 2.2
    word = sf.synthesize("Sieben", "de", tmp_path, "w")
    # gaps of different lengths: no single lag repeats the whole stretch
    stutter = sf.stutter(word, clean, (0.15, 0.4, 0.25))
    assert seconds(stutter) >= 1.0
    assert get_term("audio_repeat")(rollout(audio=stutter), CTX) < cfg.gates["audio_repeat"]
    # silence is no loop, and padding is the pauses term's business
    assert seconds(np.zeros(32000, np.float32)) == 0.0
    assert seconds(sf.pad(clean, 3.0, "internal", None)) == 0.0


def test_repetition_memory_is_linear_in_duration(tmp_path):
    """A 10-minute file: the T × T similarity matrix of before needed 14 GB; the band of lags needs ~100 MB."""
    import tracemalloc

    sf.require_speech_tools()
    sentences = [sf.synthesize(t, "en", tmp_path, f"m{i}") for i, t in enumerate(sf.SENTENCES["en"])]
    ten_minutes = np.tile(np.concatenate(sentences), 25)[: 600 * 16000]
    assert len(ten_minutes) == 600 * 16000  # 38 MB of float32 samples
    cfg = RewardConfig()
    tracemalloc.start()
    try:
        found = repeated_seconds(
            ten_minutes, cfg.repeat_min_lag_s, cfg.repeat_max_lag_s, 0.95, 0.3, 0.15, 3, cfg.floor_dbfs
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found == 0.0  # the sentences repeat only every ~30 s, far beyond the lags searched
    assert peak < 400e6, f"peak {peak / 1e6:.0f} MB"


def test_the_frame_floor_is_one_config_key_that_reaches_audio_repeat_and_pauses():
    """reward.floor_dbfs, set like any key, is the level audio_repeat and pauses (and speaking_rate) read: a soft
    loop at -60 dBFS between digital silence is a loop and speech at the default -80, neither above -50."""
    from llasa_grpo.config import Config
    from tomlconfig import load_config

    rng = np.random.default_rng(0)
    segment = rng.standard_normal(1600).astype(np.float32)  # 100 ms, looped 20 times
    segment *= 10 ** (-60 / 20) / np.sqrt(np.mean(segment**2))
    silence = np.zeros(8000, np.float32)
    clip = np.concatenate([silence, np.tile(segment, 20), silence])

    def terms(overrides: list[str]) -> tuple[float, float]:
        cfg = load_config(Config, TINY, overrides).reward
        ctx = StepContext(cfg)
        return get_term("audio_repeat")(rollout(audio=clip), ctx), get_term("pauses")(rollout(audio=clip), ctx)

    repeat, pauses = terms([])
    assert RewardConfig().floor_dbfs == -80.0 and repeat < 0.05 and pauses > 0.5  # ~2 s repeating; speech
    assert terms(["reward.floor_dbfs=-50"]) == (1.0, 0.0)  # no frame counts: no loop, and no speech at all
    with pytest.raises(ConfigError, match=r"reward.floor_dbfs=0.0: must be a level below 0 dBFS"):
        load_config(Config, TINY, ["reward.floor_dbfs=0"])
