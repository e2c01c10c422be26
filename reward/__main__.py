"""``python -m reward score``: what the training reward says about recordings, one JSON object per clip.

python -m reward score --config tiny.toml --language de --text "Der Zug fährt um acht Uhr ab." a.wav b.wav
python -m reward score --manifest clips.jsonl     # lines: {"text", "audio", "language"?, "codes"?, "finished"?}

Installed, the same program is ``llasa-grpo score``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

from reward.config import RewardConfig, TranscriberConfig, check_rate_band
from reward.terms import resolve_terms
from tomlconfig import ConfigError, FieldError, from_dict


def load_configs(path: Path | None) -> tuple[RewardConfig, TranscriberConfig]:
    """The ``[reward]`` and ``[transcriber]`` tables of a training config, checked by the shared loader."""
    if path is None:
        return RewardConfig(), TranscriberConfig()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        reward = from_dict(RewardConfig, data.get("reward", {}), source=f"{path} [reward]")
        resolve_terms(reward)
        return reward, from_dict(TranscriberConfig, data.get("transcriber", {}), source=f"{path} [transcriber]")
    except (OSError, tomllib.TOMLDecodeError, ConfigError, FieldError) as e:
        raise SystemExit(f"[reward] --config {path}: {e}") from None


MAX_CODE = 65535  # X-Codec2 codes lie in 0..65535


def manifest_row(row: Any) -> dict[str, Any]:
    """A manifest line's object checked field by field (ValueError with the reason), as training data rows are:
    ``finished`` must be true/false (``bool("no")`` would be True), ``codes`` integers in 0..65535."""
    if not isinstance(row, dict):
        raise ValueError(f"expected an object with 'text' and 'audio', got {type(row).__name__}")
    for key in ("text", "audio"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise ValueError(f"field {key!r} must be a non-empty string, got {row.get(key)!r}")
    for key in ("language", "ref_audio"):
        if row.get(key) is not None and not isinstance(row[key], str):
            raise ValueError(f"field {key!r} must be a string, got {type(row[key]).__name__}")
    if "finished" in row and not isinstance(row["finished"], bool):
        raise ValueError(f"field 'finished' must be true or false, got {row['finished']!r}")
    codes = row.get("codes")
    if codes is not None:
        if not isinstance(codes, list):
            raise ValueError(f"field 'codes' must be an array of integers, got {type(codes).__name__}")
        for i, c in enumerate(codes):
            if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= MAX_CODE:
                raise ValueError(f"field 'codes'[{i}] = {c!r}: codes are integers in 0..{MAX_CODE}")
    return dict(row)


def read_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.manifest:
        rows = []
        try:
            lines = Path(args.manifest).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise SystemExit(f"[reward] --manifest {args.manifest}: cannot read it ({e})") from None
        for n, line in enumerate(lines, 1):
            if line.strip():
                try:
                    row = manifest_row(json.loads(line))
                except json.JSONDecodeError as e:
                    raise SystemExit(
                        f"[reward] {args.manifest}:{n}: invalid JSON ({e.msg} at column {e.colno})"
                    ) from None
                except ValueError as e:
                    raise SystemExit(f"[reward] {args.manifest}:{n}: {e}") from None
                row["language"] = row.get("language") or args.language
                base = Path(args.manifest).parent
                row["audio"] = str(base / row["audio"]) if not Path(row["audio"]).is_absolute() else row["audio"]
                rows.append(row)
        return rows
    if not args.text or not args.clips:
        raise SystemExit("[reward] give --text and one or more clips, or --manifest FILE.jsonl")
    return [{"text": args.text, "language": args.language, "audio": clip} for clip in args.clips]


def add_score_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("clips", nargs="*", help="16 kHz (or any rate: resampled) audio files")
    p.add_argument("--config", type=Path, help="TOML with [reward] and [transcriber] tables (keys below)")
    p.add_argument("--text", help="what every clip should say")
    p.add_argument("--language", help="language code, e.g. de or en (never auto-detected)")
    p.add_argument("--manifest", help="JSONL with text, audio and optional language, codes, finished")
    p.add_argument("--rate-band", type=float, nargs=2, metavar=("LOW", "HIGH"), help="letters/s band")


def keys_help() -> str:
    from tomlconfig import config_keys, format_keys

    keys = [*config_keys(RewardConfig, "reward."), *config_keys(TranscriberConfig, "transcriber.")]
    return "--config keys (the [reward] and [transcriber] tables of a training config):\n" + "\n".join(
        format_keys(keys)
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m reward score ...``."""
    p = argparse.ArgumentParser(prog="python -m reward", description="Score recordings with the training reward.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "score",
        help="print one JSON object per clip",
        epilog=keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_score_arguments(s)
    return score(p.parse_args(argv))


def score_main(argv: list[str] | None = None, prog: str = "python -m reward score") -> int:
    """The ``score`` program alone (``llasa-grpo score ...``)."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Score recordings with the training reward: one JSON object per clip.",
        epilog=keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_score_arguments(p)
    return score(p.parse_args(argv))


def score(args: argparse.Namespace) -> int:
    reward_cfg, transcriber_cfg = load_configs(args.config)
    args.language = args.language or transcriber_cfg.language  # as in training: the row's, else the config's
    rows = read_rows(args)
    missing = [r["audio"] for r in rows if not r.get("language")]
    if missing:
        raise SystemExit(
            f"[reward] no language for {missing[0]}: pass --language, a 'language' per line, or transcriber.language"
        )

    from llasa_grpo import recipe  # the composition root: it picks the transcription backend
    from reward.scorer import score_audio
    from tts.audio import load_audio

    try:
        band = check_rate_band(args.rate_band, "--rate-band") if args.rate_band else None
        audios = [load_audio(r["audio"]) for r in rows]
    except ValueError as e:  # names the file or the band
        raise SystemExit(str(e)) from None
    results = score_audio(rows, audios, recipe.build_transcriber(transcriber_cfg), reward_cfg, band)
    for row, result in zip(rows, results, strict=True):
        print(json.dumps({"audio": row["audio"], **result}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
