from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import pytest

from grpo.config import GRPOConfig, OptimConfig, RunConfig
from tomlconfig import (
    ConfigError,
    FieldError,
    config_keys,
    describe,
    dump_toml,
    field_comments,
    load_config,
    parse_override,
)


@dataclass(frozen=True)
class Inner:
    name: str = "x"
    ratio: float = 0.5
    band: tuple[float, float] = (1.0, 2.0)
    mode: Literal["a", "b"] = "a"
    weights: dict[str, float] = field(default_factory=lambda: {"wer": 1.0, "rate": 0.5})
    language: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.ratio <= 1:
            raise FieldError("ratio", self.ratio, "must lie in [0, 1]")


@dataclass(frozen=True)
class Root:
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self) -> None:
        if self.run.max_steps < self.grpo.num_iterations:
            raise FieldError("run.max_steps", self.run.max_steps, "fewer steps than grpo.num_iterations")


def _write(tmp_path, text: str):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_values_types_and_defaults(tmp_path):
    path = _write(
        tmp_path,
        """
[grpo]
group_size = 8
batch_size = 16
beta = 0      # an integer where a float is declared is accepted as 0.0
[inner]
band = [3, 4.5]
mode = "b"
[inner.weights]
wer = 2.0
""",
    )
    cfg = load_config(Root, path)
    assert cfg.grpo.group_size == 8 and cfg.grpo.prompts_per_step == 2
    assert cfg.grpo.beta == 0.0 and isinstance(cfg.grpo.beta, float)
    assert cfg.inner.band == (3.0, 4.5) and cfg.inner.mode == "b"
    assert cfg.inner.weights == {"wer": 2.0}  # a table in the file is the whole table
    assert cfg.run == RunConfig()  # absent section: defaults


def test_resolved_toml_round_trips(tmp_path):
    cfg = load_config(Root, _write(tmp_path, "[inner]\nname = 'a \"quoted\" \\\\ name'\n"), ["inner.language=de"])
    again = load_config(Root, _write(tmp_path, dump_toml(cfg)))
    assert again == cfg
    assert load_config(Root, _write(tmp_path, dump_toml(Root()))) == Root()  # None written as a comment


def test_overrides_parse_toml_literals_and_merge_into_tables(tmp_path):
    path = _write(tmp_path, "[grpo]\nbeta = 0.0\n")
    cfg = load_config(
        Root, path, ["grpo.beta=0.04", "run.output_dir=runs/x", "inner.band=[5, 6]", "inner.weights.rate=3"]
    )
    assert cfg.grpo.beta == 0.04
    assert cfg.run.output_dir == "runs/x"  # a bare word is a string
    assert cfg.inner.band == (5.0, 6.0)
    assert cfg.inner.weights == {"wer": 1.0, "rate": 3.0}  # --set changes one key of a table, keeps the rest
    assert parse_override("run.gradient_checkpointing=true") == (["run", "gradient_checkpointing"], True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[grpo]\ngruop_size = 4\n", r"c\.toml: grpo\.gruop_size: unknown key .*did you mean 'group_size'"),
        ("[grpoo]\n", r"c\.toml: grpoo: unknown key .*did you mean 'grpo'"),
        ("[grpo]\ngroup_size = '4'\n", r"c\.toml: grpo\.group_size: expected an integer, got str '4'"),
        ("[grpo]\ngroup_size = 4.0\n", r"grpo\.group_size: expected an integer"),
        ("[run]\ngradient_checkpointing = 1\n", r"run\.gradient_checkpointing: expected true or false"),
        ("[grpo]\ngroup_size = 1\nbatch_size = 4\n", r"c\.toml: grpo\.group_size=1: GRPO needs at least 2"),
        (
            "[grpo]\ngroup_size = 4\nbatch_size = 6\n",
            r"grpo\.batch_size=6: must be a positive multiple of group_size=4",
        ),
        ("[grpo]\neps_low = -0.1\n", r"grpo\.eps_low=-0\.1: must be >= 0"),
        # each optimizer key is blamed by its own name
        ("[optim]\nadam_eps = 0.0\n", r"c\.toml: optim\.adam_eps=0\.0: must be > 0"),
        ("[optim]\nmax_grad_norm = -1.0\n", r"c\.toml: optim\.max_grad_norm=-1\.0: must be >= 0"),
        ("[optim]\nweight_decay = -0.1\n", r"c\.toml: optim\.weight_decay=-0\.1: must be >= 0"),
        ("[inner]\nratio = 2\n", r"c\.toml: inner\.ratio=2\.0: must lie in \[0, 1\]"),
        ("[inner]\nband = [1]\n", r"inner\.band: expected an array of 2 values"),
        ("[inner]\nmode = 'c'\n", r"inner\.mode: expected one of 'a', 'b'"),
        ("[grpo]\nnum_iterations = 5\n[run]\nmax_steps = 2\n", r"c\.toml: run\.max_steps=2: fewer steps"),
        ("grpo = 3\n", r"c\.toml: grpo: expected a table, got int 3"),
        ("[run]\nreport_to = ['jsonl', 'wandbx']\n", r"run\.report_to=\['jsonl', 'wandbx'\]: unknown sink 'wandbx'"),
        ("[run]\nreport_to = ['wandb', 'wandb']\n", r"run\.report_to=.*: a sink listed twice: choose among 'jsonl'"),
        ("[run]\npush_to_hub = 'model'\n", r"run\.push_to_hub='model': expected a Hub repo id like 'org/name'"),
        # a retired key names what replaced it
        ("[run]\ntensorboard = true\n", r"c\.toml: run\.tensorboard: no longer a key: replaced by run\.report_to"),
        ("[grpo\n", r"c\.toml: not valid TOML"),
    ],
)
def test_bad_configs_name_file_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Root, _write(tmp_path, text))


def test_bad_overrides_are_named(tmp_path):
    path = _write(tmp_path, "")
    with pytest.raises(ConfigError, match=r"--set grpo.bta=1: unknown key grpo.bta .*did you mean 'beta'"):
        load_config(Root, path, ["grpo.bta=1"])
    with pytest.raises(ConfigError, match=r"--set grpo.beta=-1: grpo.beta=-1.0: must be >= 0"):
        load_config(Root, path, ["grpo.beta=-1"])
    with pytest.raises(ConfigError, match=r"--set run.tensorboard=false: run.tensorboard is no longer a key: replaced"):
        load_config(Root, path, ["run.tensorboard=false"])
    with pytest.raises(ConfigError, match=r"expected section.key=value"):
        load_config(Root, path, ["grpo.beta"])
    with pytest.raises(ConfigError, match=r"no such config file"):
        load_config(Root, tmp_path / "missing.toml")


@dataclass(frozen=True)
class Documented:
    # the lines above a field
    # are its comment
    beta: float = 0.0  # and so is the end of its line
    plain: int = 1
    mode: Literal["a", "b"] = "a"  # one of two
    inner: Inner = field(default_factory=Inner)


def test_field_comments_become_the_help_text():
    assert field_comments(Documented) == {
        "beta": "the lines above a field are its comment and so is the end of its line",
        "mode": "one of two",
    }
    keys = config_keys(Documented)
    assert keys[:3] == [
        ("beta", "float", "0.0", "the lines above a field are its comment and so is the end of its line"),
        ("plain", "int", "1", ""),
        ("mode", '"a"|"b"', '"a"', "one of two"),
    ]
    assert ("inner.weights", "{str: float}", "{wer = 1.0, rate = 0.5}", "") in keys
    assert ("inner.language", "str|none", "none", "") in keys
    assert ("inner.band", "[float, float]", "[1.0, 2.0]", "") in keys
    lines = describe(Documented)  # a header, then one aligned line per key: key, type, default, meaning
    assert lines[0].split() == ["KEY", "TYPE", "DEFAULT", "MEANING"]
    assert lines[1].split(None, 3) == ["beta", "float", "0.0", keys[0][3]]
    starts = {line.index(word) for line, word in zip(lines[:4], ("TYPE", "float", "int", '"a"|"b"'), strict=True)}
    assert len(starts) == 1, lines[:4]  # the type column is aligned


def test_train_help_lists_every_key_with_its_comment(capsys):
    from llasa_grpo import train

    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    out = capsys.readouterr().out
    from llasa_grpo.config import Config

    listed = out.split("config keys")[1].splitlines()[2:]
    keys = config_keys(Config)
    assert [line.split()[0] for line in listed] == [key for key, *_ in keys]  # every key of the tree, in order
    for line, (key, kind, default, meaning) in zip(listed, keys, strict=True):  # then type, default and meaning
        cells = [re.escape(c) for c in (key, kind, default, meaning)]
        assert re.fullmatch(rf"  {cells[0]} +{cells[1]} +{cells[2]}( +{cells[3]})?", line), line
    assert ("grpo.group_size", "int", "4", "G completions per prompt") in keys
    assert [k[1:3] for k in keys if k[0] == "run.parallel"] == [('"replicate"|"fsdp"', '"replicate"')]
