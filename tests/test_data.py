"""Datasets (JSONL/CSV) with bad rows reported by line, reference durations, reference codes, and audio I/O."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tts.audio import load_audio, save_audio
from tts.data import DataError, Example, load_examples, reference_durations


def _tone(seconds: float, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    save_audio(tmp_path / "refs" / "a.wav", _tone(2.0))
    (tmp_path / "refs" / "broken.wav").write_bytes(b"not a wav file")
    rows = [
        {"text": "Hallo Welt.", "language": "de"},  # 1
        {"text": "Clone me.", "ref_audio": "refs/a.wav", "ref_text": "Zwanzig Zeichen hier", "speaker": "a"},  # 2
        "",  # 3: blank, skipped
        '{"text": "unterminated',  # 4
        {"text": "   "},  # 5
        {"ref_text": "x"},  # 6
        {"text": "Hi", "ref_audio": "refs/a.wav"},  # 7
        {"text": "Hi", "ref_audio": "refs/broken.wav", "ref_text": "y"},  # 8
        {"text": 3},  # 9
        ["text"],  # 10
    ]
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_rows_reported_with_line_numbers(dataset: Path) -> None:
    with pytest.raises(DataError) as info:
        load_examples(dataset, max_bad_fraction=0.5)
    reasons = {b.line: b.reason for b in info.value.bad_rows}
    assert sorted(reasons) == [4, 5, 6, 7, 8, 9, 10]
    assert reasons[4].startswith("invalid JSON")
    assert reasons[5] == "missing or empty 'text'" and reasons[6] == "missing or empty 'text'"
    assert reasons[7] == "'ref_audio' without 'ref_text': voice cloning needs both"
    assert "unreadable ref_audio" in reasons[8] and "broken.wav" in reasons[8]
    assert reasons[9] == "field 'text' must be a string, got int"
    assert "got list" in reasons[10]
    assert f"{dataset}:8: unreadable" in str(info.value) and "7 of 9 rows" in str(info.value)


def test_bad_rows_skipped_within_the_allowed_fraction(dataset: Path, caplog: pytest.LogCaptureFixture) -> None:
    examples = load_examples(dataset, max_bad_fraction=0.8)
    assert [e.line for e in examples] == [1, 2]
    assert examples[0] == Example(text="Hallo Welt.", language="de", line=1)
    assert examples[1].ref_audio == str((dataset.parent / "refs" / "a.wav").resolve())
    assert examples[1].speaker == "a"
    assert sum("bad data row" in r.message for r in caplog.records) == 7

    unchecked = load_examples(dataset, max_bad_fraction=0.8, check_audio=False)
    assert [e.line for e in unchecked] == [1, 2, 8]


def test_csv_rows_and_multiline_fields(tmp_path: Path) -> None:
    save_audio(tmp_path / "r.wav", _tone(1.0))
    path = tmp_path / "d.csv"
    path.write_text('text,ref_audio,ref_text\n"Zeile eins,\nmit Umbruch",,\nZwei,r.wav,Ref Text\n,,\nDrei,r.wav,\n')
    with pytest.raises(DataError) as info:
        load_examples(path)
    assert [(b.line, b.reason) for b in info.value.bad_rows] == [
        (6, "'ref_audio' without 'ref_text': voice cloning needs both")
    ]
    examples = load_examples(path, max_bad_fraction=0.5)
    assert [(e.line, e.text) for e in examples] == [(2, "Zeile eins,\nmit Umbruch"), (4, "Zwei")]
    assert examples[1].ref_audio == str((tmp_path / "r.wav").resolve())

    (tmp_path / "nohead.csv").write_text("words\nx\n")
    with pytest.raises(ValueError, match="'text' column"):
        load_examples(tmp_path / "nohead.csv")


def test_reference_durations_once_per_file(tmp_path: Path) -> None:
    examples = []
    for i, seconds in enumerate([1.0, 2.0, 1.0]):
        wav = tmp_path / f"{i % 2}.wav"  # rows 1 and 3 share a file
        save_audio(wav, _tone(seconds))
        examples.append(Example(text="Ab", ref_audio=str(wav), ref_text="zwanzig Zeichen", line=i + 1))
    examples.append(Example(text="Über", line=9))
    assert reference_durations(examples) == {str(tmp_path / "0.wav"): 1.0, str(tmp_path / "1.wav"): 2.0}
    assert reference_durations([Example(text="x")]) == {}
    with pytest.raises(ValueError, match="line 4: unreadable ref_audio"):
        reference_durations([Example(text="x", ref_audio=str(tmp_path / "none.wav"), ref_text="y", line=4)])


def test_audio_roundtrip_resample_and_errors(tmp_path: Path) -> None:
    import soundfile as sf

    stereo = np.stack([_tone(0.5, 8000), np.zeros(4000, np.float32)], axis=1)
    sf.write(tmp_path / "s.wav", stereo, 8000, subtype="FLOAT")
    wav = load_audio(tmp_path / "s.wav")
    assert wav.dtype == np.float32 and wav.shape == (8000,)  # 0.5 s at 16 kHz
    assert np.abs(wav).max() == pytest.approx(0.15, abs=0.01)  # mono = channel mean
    out = save_audio(tmp_path / "deep" / "o.wav", wav)
    assert np.allclose(load_audio(out), wav, atol=1e-4)
    assert [p.name for p in (tmp_path / "deep").iterdir()] == ["o.wav"]  # no temporary file left behind
    with pytest.raises(ValueError, match=r"cannot read audio file .*missing\.wav"):
        load_audio(tmp_path / "missing.wav")


def test_reference_codes_cached_by_content(tmp_path: Path) -> None:
    from tts.reference import ReferenceCodes, encode_references

    save_audio(tmp_path / "a.wav", _tone(0.5))
    save_audio(tmp_path / "b.wav", _tone(0.7))
    (tmp_path / "a_copy.wav").write_bytes((tmp_path / "a.wav").read_bytes())
    calls: list[str] = []

    def fake_encoder(path: Path) -> np.ndarray:  # stands in for w2v-BERT + the codec encoder
        calls.append(path.name)
        return np.arange(int(load_audio(path).size / 320), dtype=np.int32)

    cache = ReferenceCodes("HKUSTAudio/xcodec2", tmp_path / "cache", encoder=fake_encoder)
    audios = [str(tmp_path / n) for n in ("a.wav", "b.wav", "a.wav", "a_copy.wav")]
    assert encode_references(audios, cache) == (2, 1)  # a_copy has a's content: cached
    assert calls == ["a.wav", "b.wav"]
    codes = cache.get(tmp_path / "a_copy.wav")
    assert codes.dtype == np.int64 and codes.tolist() == list(range(25))
    assert sorted(p.name for p in cache.dir.iterdir()) == sorted(
        [cache.path_for(tmp_path / "a.wav").name, cache.path_for(tmp_path / "b.wav").name]
    )

    fresh = ReferenceCodes("HKUSTAudio/xcodec2", tmp_path / "cache")  # a training run: no encoder, reads the disk
    assert fresh.get(tmp_path / "b.wav").size == 35
    save_audio(tmp_path / "b.wav", _tone(0.9))  # edited file: a different hash, a miss
    with pytest.raises(FileNotFoundError, match=r"python -m tts\.reference encode"):
        fresh.get(tmp_path / "b.wav")
    other_codec = ReferenceCodes("someone/other-codec", tmp_path / "cache")
    with pytest.raises(FileNotFoundError):
        other_codec.get(tmp_path / "a.wav")
    bad = ReferenceCodes("x/y", tmp_path / "cache", encoder=lambda p: np.array([1, 70000]))
    with pytest.raises(ValueError, match=r"outside \[0, 65535\]"):
        bad.get(tmp_path / "a.wav")


def test_cached_codes_are_checked_on_load_and_files_hashed_once(tmp_path: Path, monkeypatch) -> None:
    import tts.reference as reference

    save_audio(tmp_path / "a.wav", _tone(0.5))
    cache = reference.ReferenceCodes("HKUSTAudio/xcodec2", tmp_path / "cache")
    target = cache.path_for(tmp_path / "a.wav")
    target.parent.mkdir(parents=True)
    np.save(target, np.array([3, 65536]))  # a corrupt (or foreign) cache entry
    with pytest.raises(ValueError, match=rf"cache file {re.escape(str(target))}.*outside \[0, 65535\].*delete"):
        cache.get(tmp_path / "a.wav")
    np.save(target, np.array([3, 4]))

    hashed: list[str] = []
    real = reference.file_sha256
    monkeypatch.setattr(reference, "file_sha256", lambda p: hashed.append(Path(p).name) or real(p))
    fresh = reference.ReferenceCodes("HKUSTAudio/xcodec2", tmp_path / "cache")
    assert fresh.get(tmp_path / "a.wav").tolist() == [3, 4] and fresh.get(tmp_path / "a.wav").tolist() == [3, 4]
    assert hashed == ["a.wav"]  # the second get reuses the hash of the unchanged file
    save_audio(tmp_path / "a.wav", _tone(0.9))  # edited (same length): hashed again, and a miss
    with pytest.raises(FileNotFoundError):
        fresh.get(tmp_path / "a.wav")
    assert hashed == ["a.wav", "a.wav"]
