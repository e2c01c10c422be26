"""TOML → nested frozen dataclasses: one loader for every package's config sections.

The loader is generic: it walks the type hints of any dataclass tree, so each package keeps its config next to
the code it configures (``reward/config.py``, ``tts/config.py``) and one root dataclass composes the sections.
Everything is checked before anything heavy loads: unknown keys (with a close match suggested), wrong types,
and the dataclasses' own ``__post_init__`` checks, each reported as ``file: section.key``.

    cfg = load_config(Config, "small.toml", overrides=["grpo.beta=0.04"])
    Path("run/config.resolved.toml").write_text(dump_toml(cfg))
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import io
import math
import textwrap
import tokenize
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

T = TypeVar("T")


class ConfigError(ValueError):
    """A config problem, already phrased for the user: ``small.toml: grpo.group_size=1: GRPO needs ...``."""


class FieldError(ValueError):
    """Raised by a config dataclass's ``__post_init__`` to blame one key; the loader adds file and section."""

    def __init__(self, key: str, value: Any, message: str) -> None:
        super().__init__(f"{key}={value!r}: {message}")
        self.key, self.value, self.message = key, value, message


# --------------------------------------------------------------------------------------------------------------
# Loading


def load_config(cls: type[T], path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """Read ``path`` (TOML) into ``cls``, then apply ``--set``-style ``overrides`` ("section.key=<TOML value>")."""
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"{source}: no such config file")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{source}: not valid TOML: {e}") from None
    cfg = from_dict(cls, raw, source=source)
    if not overrides:
        return cfg
    # Overrides land on the fully resolved tree, so `--set reward.weights.wer=2` keeps the other default weights.
    merged = to_dict(cfg)
    for item in overrides:
        keys, value = parse_override(item)
        _set_path(cls, merged, keys, value, item)
    return from_dict(cls, merged, source="--set " + " ".join(overrides))


def from_dict(cls: type[T], raw: Mapping[str, Any], *, source: str = "<dict>") -> T:
    """Build dataclass ``cls`` from nested mappings, checking keys, types and the dataclasses' own checks."""
    return _build(cls, raw, source, ())


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"grpo.beta=0.04"`` → (["grpo", "beta"], 0.04). The value is a TOML literal; bare words are strings."""
    key, sep, text = item.partition("=")
    keys = [k.strip() for k in key.split(".")]
    if not sep or not all(keys):
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set grpo.beta=0.04")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()  # `--set model.path=/data/x` without quotes
    return keys, value


def _set_path(cls: type, tree: dict[str, Any], keys: list[str], value: Any, item: str) -> None:
    hint: Any = cls
    node = tree
    for i, key in enumerate(keys):
        where = ".".join(keys[: i + 1])
        if dataclasses.is_dataclass(hint):
            hints = _hints(hint)
            if key not in hints:
                if retired := _retired(hint, key):
                    raise ConfigError(f"--set {item}: {where} is no longer a key: {retired}")
                raise ConfigError(f"--set {item}: unknown key {where}{_suggest(key, hints)}")
            hint = hints[key]
        elif _is_mapping(hint):
            hint = typing.get_args(hint)[1] if typing.get_args(hint) else Any
        else:
            raise ConfigError(f"--set {item}: {'.'.join(keys[:i])} is a value, not a section")
        if i == len(keys) - 1:
            node[key] = value
        else:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]


# --------------------------------------------------------------------------------------------------------------
# Type checking


def _hints(cls: type) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return {k: v for k, v in typing.get_type_hints(cls).items() if k in names}


def _retired(cls: type, key: str) -> str | None:
    """What replaced a key an older config may still have: a dataclass's ``retired_keys`` ClassVar."""
    return dict(getattr(cls, "retired_keys", {})).get(key)


def _suggest(key: str, known: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f" (known keys: {', '.join(sorted(known))}){hint}"


def _is_mapping(hint: Any) -> bool:
    return typing.get_origin(hint) in (dict, Mapping) or hint in (dict, Mapping)


def _build(cls: type, raw: Any, source: str, path: tuple[str, ...]) -> Any:
    where = ".".join(path)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: {where or 'top level'}: expected a table, got {_describe(raw)}")
    hints = _hints(cls)
    unknown = [k for k in raw if k not in hints]
    if unknown:
        key = ".".join((*path, unknown[0]))
        if retired := _retired(cls, unknown[0]):
            raise ConfigError(f"{source}: {key}: no longer a key: {retired}")
        raise ConfigError(f"{source}: {key}: unknown key{_suggest(unknown[0], hints)}")
    kwargs = {k: _convert(hints[k], v, source, (*path, k)) for k, v in raw.items()}
    try:
        return cls(**kwargs)
    except FieldError as e:
        key = ".".join((*path, e.key))
        raise ConfigError(f"{source}: {key}={e.value!r}: {e.message}") from None
    except (ValueError, TypeError) as e:
        msg = str(e)
        prefix = f"[{where}] " if where else ""
        raise ConfigError(f"{source}: {msg if msg.startswith('[') else prefix + msg}") from None


def _convert(hint: Any, value: Any, source: str, path: tuple[str, ...]) -> Any:
    """Check ``value`` against type hint ``hint``; convert lists to tuples and ints to floats where declared.

    The types the project's configs use: bool, int, float, str, Literal, ``X | None``, fixed and variadic tuples,
    ``dict[str, X]`` and nested dataclasses; anything else is refused, so a new kind of field gets a check here.
    """
    key = ".".join(path)

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{source}: {key}: expected {expected}, got {_describe(value)}")

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        if dataclasses.is_dataclass(value):  # already built (a default, or a tree passed back in)
            return value
        return _build(hint, value, source, path)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, source, path)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise bad(" or ".join(_type_name(a) for a in args))
    if origin is Literal:
        if value not in args:
            raise bad("one of " + ", ".join(repr(a) for a in args))
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        if not math.isfinite(value):
            raise bad("a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad(f"an array {_type_name(hint)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, source, (*path, str(i))) for i, v in enumerate(value))
        if len(value) != len(args):
            raise bad(f"an array of {len(args)} values")
        return tuple(_convert(a, v, source, (*path, str(i))) for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if _is_mapping(hint):
        if not isinstance(value, Mapping):
            raise bad("a table")
        kt, vt = args if args else (Any, Any)
        return {
            _convert(kt, k, source, (*path, str(k))): _convert(vt, v, source, (*path, str(k))) for k, v in value.items()
        }
    raise ConfigError(f"{source}: {key}: the loader cannot check type {hint!r}")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


# --------------------------------------------------------------------------------------------------------------
# Help: a field's comment in its dataclass is its documentation


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the source of dataclass ``cls``: the comment lines right above the field, then
    the comment at the end of its line. Fields without one are left out."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (a class built at run time)
        return {}
    comments = {
        tok.start[0]: tok.string.lstrip("#").strip()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, str] = {}
    above: list[str] = []
    for number, line in enumerate(source.splitlines(), 1):
        body = line.strip()
        if body.startswith("#"):
            above.append(comments.get(number, ""))
            continue
        name = body.split(":", 1)[0].strip()
        if line.startswith("    ") and not line.startswith("     ") and name in names and ":" in body:
            text = " ".join([*above, comments.get(number, "")]).strip()
            if text:
                out[name] = text
        above = []
    return out


def config_keys(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Every key of the config tree ``cls`` as (``section.key``, type, default, meaning), in declaration order.

    The type and default are written as in TOML; the meaning is the field's comment (``field_comments``)."""
    rows = []
    comments = field_comments(cls)
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key, hint = f"{prefix}{f.name}", hints[f.name]
        if dataclasses.is_dataclass(hint):
            rows += config_keys(hint, f"{key}.")
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if default is None:
            value = "none"
        elif isinstance(default, Mapping):  # a table: its keys inline
            value = "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in default.items()) + "}"
        else:
            value = _value(to_dict(default))
        rows.append((key, type_name(hint), value, comments.get(f.name, "")))
    return rows


def describe(cls: type, prefix: str = "") -> list[str]:
    """``config_keys`` as aligned lines under a header, for ``--help``: ``  key  type  default  meaning``."""
    return format_keys(config_keys(cls, prefix))


def format_keys(keys: Sequence[tuple[str, str, str, str]]) -> list[str]:
    rows = [("KEY", "TYPE", "DEFAULT", "MEANING"), *keys]
    # Widths from the rows, capped so that one long default (a template string) does not push every line right.
    widths = [min(max(len(r[i]) for r in rows), cap) for i, cap in enumerate((44, 18, 24))]
    return [f"  {k:<{widths[0]}}  {t:<{widths[1]}}  {d:<{widths[2]}}  {m}".rstrip() for k, t, d, m in rows]


def type_name(hint: Any) -> str:
    """A field's type as ``--help`` shows it: ``float``, ``int|none``, ``"hf"|"vllm"``, ``[float, float]``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return "|".join("none" if a is type(None) else type_name(a) for a in args)
    if origin is Literal:
        return "|".join(_value(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"[{type_name(args[0])}, ...]"
        return "[" + ", ".join(type_name(a) for a in args) + "]"
    if _is_mapping(hint):
        kt, vt = args if args else (Any, Any)
        return "{" + f"{type_name(kt)}: {type_name(vt)}" + "}"
    if hint is Any:
        return "any"
    return _type_name(hint)


# --------------------------------------------------------------------------------------------------------------
# Writing


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass tree as plain nested dicts (tuples stay tuples)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v) if f.init}
        if isinstance(v, Mapping):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(plain(x) for x in v)
        return v

    return plain(cfg)


def dump_toml(cfg: Any) -> str:
    """Serialise a config tree as TOML that ``load_config`` reads back to an equal tree.

    TOML has no null: ``None`` values are written as comments and thus load back as their (``None``) default.
    """
    lines: list[str] = []

    def table(prefix: str, data: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in data.items() if not isinstance(v, Mapping)}
        tables = {k: v for k, v in data.items() if isinstance(v, Mapping)}
        if prefix and (scalars or not tables):
            lines.append(f"\n[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"# {_key(k)} = none" if v is None else f"{_key(k)} = {_value(v)}")
        for k, v in tables.items():
            table(f"{prefix}.{_key(k)}" if prefix else _key(k), v)

    table("", to_dict(cfg))
    return "\n".join(lines).lstrip("\n") + "\n"


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else _value(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"[config] cannot write {v!r} as TOML")
