"""The import structure: packages import one way, reward/ has no cycle, every module imports on its own.

The graph is read from the source (every ``import`` anywhere in a file, also inside functions and under
``TYPE_CHECKING``), so a cycle hidden behind a late import counts too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("grpo", "tts", "reward", "evaluation", "tomlconfig", "lab", "atomicfs")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: str) -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def imported_names(path: Path) -> set[str]:
    """Every module name ``path`` imports (absolute imports; the project uses no relative ones)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from reward import terms`
    return names


def import_graph(package: str) -> dict[str, set[str]]:
    """module → the modules of the same package it imports."""
    mods = modules(package)
    return {name: {m for m in imported_names(path) if m in mods and m != name} for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, …, a], or None (depth-first search with the path on a stack)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_late_and_indirect_cycles(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    # the shape reward/ had: config imported terms inside a function, terms imported config at the top
    source = tmp_path / "m.py"
    source.write_text("import x.terms\ndef f():\n    from x.config import C\n")
    assert imported_names(source) == {"x.terms", "x.config", "x.config.C"}


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package):
    cycle = find_cycle(import_graph(package))
    assert cycle is None, f"import cycle in {package}/: {' → '.join(cycle)}"


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("grpo", ("tts", "reward", "evaluation", "recipe", "llasa_grpo", "lab")),  # the loop knows no speech
        ("tts", ("reward", "grpo", "evaluation", "recipe", "llasa_grpo", "lab")),
        ("reward", ("evaluation", "lab")),
        ("lab", ("evaluation", "llasa_grpo")),  # the lab builds models; the recipe loads them by name
        ("tomlconfig", ("grpo", "tts", "reward", "evaluation", "recipe", "llasa_grpo")),
        ("atomicfs", ("grpo", "tts", "reward", "evaluation", "tomlconfig", "llasa_grpo", "lab")),  # a leaf
    ],
)
def test_imports_flow_one_way(package, forbidden):
    wrong = sorted(
        f"{name} imports {m}"
        for name, path in modules(package).items()
        for m in imported_names(path)
        if m.split(".")[0] in forbidden
    )
    assert not wrong, wrong


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_every_reward_module_imports_alone():
    """Each module in a fresh interpreter: an import that only works after another module was imported fails."""
    for name in modules("reward"):
        result = _fresh(f"import {name}")
        assert result.returncode == 0, f"import {name}:\n{result.stderr[-2000:]}"


def test_reward_terms_and_transcription_need_no_torch():
    """The codec constants live in tts.constants, so terms, rates, audio features, the hook and the ASR backends
    import without torch (only the scorer, which hands rewards to grpo as a tensor, needs it); so does the config."""
    light = [
        "reward.config", "reward.terms", "reward.rate", "reward.audio_features", "reward.hook", "reward.combine",
        "reward.speaker", "reward.asr.transcript", "reward.asr.whisper", "reward.asr.http", "tts.constants",
        "grpo.config", "grpo.http", "llasa_grpo.config",  # the whole config tree, read by --help
    ]  # fmt: skip
    result = _fresh(f"import sys, {', '.join(light)}; print('torch' in sys.modules)")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"


def test_setup_installs_the_packages_and_no_top_level_scripts():
    """``train.py`` and ``evaluate.py`` are checkout scripts: installed as modules, ``import evaluate`` anywhere in
    the environment would find this project instead of Hugging Face's ``evaluate``."""
    import configparser

    from setuptools import find_packages

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert not cfg.get("options", "py_modules", fallback="").strip()
    include = [p.strip() for p in cfg.get("options.packages.find", "include").split(",")]
    installed = set(find_packages(str(ROOT), include=include))
    assert {*PACKAGES, "llasa_grpo", "reward.asr"} <= installed
    assert not {"tests", "bench"} & installed
