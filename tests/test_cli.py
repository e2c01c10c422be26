"""The installed command: ``llasa-grpo <program>``, its help, ``--print-config``, and ``pip install .`` for real."""

from __future__ import annotations

import argparse
import configparser
import os
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

from llasa_grpo import cli
from llasa_grpo.config import Config
from tomlconfig import from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        status = cli.main(list(argv))
    except SystemExit as e:  # argparse: --help, or a usage error
        status = e.code or 0
    out = capsys.readouterr()
    return status, out.out, out.err


def test_the_command_lists_its_programs_and_refuses_an_unknown_one(capsys):
    status, out, _ = run_cli(capsys, "--help")
    assert status == 0 and out.startswith("usage: llasa-grpo <command>")
    assert (
        set(cli.SUBCOMMANDS) == {"train", "evaluate", "score", "serve", "transcribe-serve", "push"} <= set(out.split())
    )
    status, _, err = run_cli(capsys, "trian")
    assert status == 2 and "unknown command 'trian'" in err and "train" in err
    assert run_cli(capsys)[0] == 2  # no command: the usage, and a usage error


@pytest.mark.parametrize("name", list(cli.SUBCOMMANDS))
def test_every_program_calls_itself_by_the_name_it_was_run_as(capsys, name):
    status, out, _ = run_cli(capsys, name, "--help")
    assert status == 0 and out.startswith(f"usage: llasa-grpo {name} "), out[:200]


def test_the_module_entry_points_name_themselves(capsys):
    import grpo.serve
    import reward.__main__
    import reward.service

    for main, name in [
        (grpo.serve.main, "python -m grpo.serve"),
        (reward.service.main, "python -m reward.service"),
        (lambda a: reward.__main__.main(["score", *a]), "python -m reward score"),
    ]:
        with pytest.raises(SystemExit):
            main(["--help"])
        assert capsys.readouterr().out.startswith(f"usage: {name} ")


def test_the_services_describe_every_option(capsys, monkeypatch):
    import grpo.serve
    import reward.service

    with pytest.raises(SystemExit):
        reward.service.main(["--help"])
    out = capsys.readouterr().out
    assert "--silence-dbfs FLOAT" in out and "transcriber.silence_dbfs; default -50.0" in out
    assert "--host HOST" in out and "default 127.0.0.1" in out

    seen: list[argparse.Action] = []

    def capture(parser, *args, **kwargs):  # the parser as built; the service itself never starts
        seen.extend(parser._actions)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    for main in (grpo.serve.main, reward.service.main):
        seen.clear()
        with pytest.raises(SystemExit):
            main([])
        assert len(seen) > 5 and all(a.help for a in seen), [a.option_strings for a in seen if not a.help]


def _plain_main(argv: list[str]) -> int:
    """A program whose main takes no ``prog`` (argparse's default: sys.argv[0])."""
    print(argparse.ArgumentParser().prog)
    return 3


def test_a_program_without_a_prog_parameter_is_named_through_argv(capsys, monkeypatch):
    monkeypatch.setitem(cli.SUBCOMMANDS, "plain", ("tests.test_cli:_plain_main", "a test program"))
    argv0 = sys.argv[0]
    status, out, _ = run_cli(capsys, "plain", "x")
    assert (status, out.strip()) == (3, "llasa-grpo plain") and sys.argv[0] == argv0


def test_print_config_prints_the_resolved_config_that_loads_back_equal(capsys, tmp_path):
    sets = ["--set", "grpo.beta=0.04", "--set", "reward.weights.wer=2"]
    status, out, _ = run_cli(capsys, "train", "--config", str(ROOT / "tiny.toml"), *sets, "--print-config")
    assert status == 0
    expected = load_config(Config, ROOT / "tiny.toml", ["grpo.beta=0.04", "reward.weights.wer=2"])
    assert from_dict(Config, tomllib.loads(out)) == expected
    assert expected.grpo.beta == 0.04 and expected.reward.weights["wer"] == 2.0  # the overrides are in it
    assert not (tmp_path / "runs").exists()  # nothing ran

    status, _, err = run_cli(
        capsys, "train", "--config", str(ROOT / "tiny.toml"), "--set", "grpo.bta=1", "--print-config"
    )
    assert status == 2 and "unknown key grpo.bta" in err and "did you mean 'beta'" in err


def test_the_command_imports_a_program_only_when_it_runs():
    """``llasa-grpo --help`` imports no program (no torch, no vLLM): each loads when its subcommand runs."""
    code = (
        "import sys, contextlib, io\n"
        "from llasa_grpo import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    cli.main(['--help'])\n"
        "print('torch' in sys.modules, 'llasa_grpo.train' in sys.modules, 'grpo.serve' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False", "False", "False"]


def test_setup_installs_one_command_for_the_programs():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    scripts = [line.strip() for line in cfg.get("options.entry_points", "console_scripts").splitlines() if line.strip()]
    assert scripts == ["llasa-grpo = llasa_grpo.cli:main"]
    assert "vllm>=0.10.0,<0.34" in cfg.get("options.extras_require", "vllm")


def _checkout_files() -> list[str]:
    """What a fresh clone holds, plus this working tree's uncommitted edits and new files (not ignored ones)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [f for f in listed.split("\0") if f and (ROOT / f).is_file()]


@pytest.mark.slow
def test_pip_install_from_a_fresh_clone_gives_a_working_command(tmp_path):
    """``pip install .`` of a copy of the checkout into a new venv, then the command, run from elsewhere.

    The venv reaches this environment's site-packages (torch, transformers, ...) through a path file, so nothing
    is downloaded (``--no-deps --no-build-isolation``); the project itself comes only from the copy. A .pth line
    adds the folder but processes none of its own .pth files, so this environment's editable install of the
    project stays invisible."""
    clone = tmp_path / "clone"
    for name in _checkout_files():
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, clone / name)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    outer = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (Path(site) / "outer-environment.pth").write_text("\n".join(outer) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # --ignore-installed: the outer environment's editable llasa-grpo is never a candidate for uninstalling.
    pip = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check", "-q", "install"]
    install = subprocess.run(
        [*pip, "--no-deps", "--no-build-isolation", "--ignore-installed", "--no-cache-dir", str(clone)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]

    command = env_dir / "bin" / "llasa-grpo"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=elsewhere, capture_output=True, text=True, env=env, timeout=120)

    where = run(str(python), "-c", "import llasa_grpo, lab.assets; print(llasa_grpo.__file__, lab.assets.ASSETS)")
    assert where.returncode == 0 and where.stdout.startswith(site), where.stdout + where.stderr
    assert (Path(where.stdout.split()[1]) / "llasa" / "model.safetensors").is_file()  # package data travels too
    shown = run(str(command), "--help")
    assert shown.returncode == 0 and "transcribe-serve" in shown.stdout, shown.stderr
    train_help = run(str(command), "train", "--help")
    assert train_help.returncode == 0 and "grpo.group_size" in train_help.stdout, train_help.stderr
    printed = run(str(command), "train", "--print-config", "--config", str(clone / "tiny.toml"))
    assert printed.returncode == 0, printed.stderr
    assert from_dict(Config, tomllib.loads(printed.stdout)) == load_config(Config, ROOT / "tiny.toml")
