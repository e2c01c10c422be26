"""Hub-ready checkpoints: every checkpoint's model card, evaluate.py's section in it, and the push (up to the
network: the files it would upload and the calls it makes)."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import pytest

from grpo.checkpoint import validate_checkpoint
from grpo.trainer import GRPOTrainer
from llasa_grpo import push as hub
from llasa_grpo.card import EVAL_END, EVAL_START, NOT_EVALUATED, card_writer, update_evaluation
from llasa_grpo.config import load
from llasa_grpo.evaluate import Checkpoint, update_model_cards
from tests.grpo_fixtures import (
    ScriptedGenerator,
    TokenSetScorer,
    one_thread,  # noqa: F401 (a fixture, used by pytestmark)
    prompts,
    tiny_llama,
    training_config,
)

pytestmark = pytest.mark.usefixtures("one_thread")
BASE = "SebastianBodza/SmolKartoffel-135M-v0.1"


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """checkpoint-2 of a 2-step run whose trainer writes the recipe's model card (tiny.toml, a Hub base)."""
    cfg = load("tiny.toml", [f'model.path="{BASE}"'])
    tr = GRPOTrainer(
        tiny_llama(),
        ScriptedGenerator(),
        TokenSetScorer(range(2, 12)),
        prompts(6),
        training_config(tmp_path / "run", run={"max_steps": 2}),
    )
    tr.model_card = card_writer(cfg)
    result = tr.train()
    assert result.checkpoint is not None
    return result.checkpoint


def test_every_checkpoint_has_a_model_card(checkpoint):
    card = (checkpoint / "README.md").read_text(encoding="utf-8")
    front = card.split("---\n")[1]
    assert f"base_model: {BASE}" in front and "pipeline_tag: text-to-speech" in front
    assert "- text-to-speech\n" in front and "- llasa\n" in front
    assert "| training data | `data/tiny.jsonl` |" in card
    cfg = load("tiny.toml")
    for term, weight in cfg.reward.weights.items():  # every reward term with its weight
        assert f"| {term} | {weight:g} |" in card
    assert "## Latest metrics (step 2)" in card and "| reward/mean |" in card and "| time/step" not in card
    config = tomllib.loads(card.split("```toml\n")[1].split("```")[0])  # the resolved config, loadable
    assert config["grpo"]["beta"] == cfg.grpo.beta and config["model"]["path"] == BASE
    assert f"{EVAL_START}\n{NOT_EVALUATED}\n{EVAL_END}" in card
    validate_checkpoint(checkpoint)


def test_evaluation_refreshes_the_card_in_place_and_the_checkpoint_stays_valid(checkpoint, tmp_path):
    base = tmp_path / "base"  # a plain model folder (no checkpoint marker): its card, if any, is not touched
    base.mkdir()
    (base / "README.md").write_text("someone else's card\n")
    args = argparse.Namespace(data="data/eval_tiny.jsonl", samples=4, seed=0)
    table = "| metric | base | grpo |\n|---|---|---|\n| WER | 1 | 0.5 |"
    ckpts = [Checkpoint("base", f"base={base}", str(base)), Checkpoint("grpo", f"grpo={checkpoint}", str(checkpoint))]
    assert update_model_cards(ckpts, table, tmp_path / "eval" / "report.md", args, 8, [0.7, 1.0]) == [
        checkpoint / "README.md"
    ]
    card = (checkpoint / "README.md").read_text(encoding="utf-8")
    assert table in card and "column **grpo**" in card and "temperature 0.7, 1" in card and NOT_EVALUATED not in card
    assert (base / "README.md").read_text() == "someone else's card\n"
    validate_checkpoint(checkpoint)  # the card is outside the marker's size check: still a valid checkpoint
    update_evaluation(checkpoint, "second evaluation")
    card = (checkpoint / "README.md").read_text(encoding="utf-8")
    assert card.count(EVAL_START) == 1 and "second evaluation" in card and table not in card
    (checkpoint / "README.md").write_text("# a card without markers\n")
    update_evaluation(checkpoint, "appended")
    assert (checkpoint / "README.md").read_text().endswith(f"## Evaluation\n\n{EVAL_START}\nappended\n{EVAL_END}\n")


class _FakeApi:
    """HfApi's two calls that a push makes, recorded instead of sent."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []

    def create_repo(self, *args, **kwargs):
        self.calls.append(("create_repo", args, kwargs))

    def create_commit(self, *args, **kwargs):
        self.calls.append(("create_commit", args, kwargs))


def test_push_uploads_the_model_folder_and_card_not_the_resume_state(checkpoint):
    files = hub.upload_files(checkpoint)
    assert {"README.md", "config.json", "model.safetensors"} <= set(files)
    assert not {"optimizer.pt", "scheduler.pt", "rng-rank0.pt", "trainer_state.json", "checkpoint.complete"} & set(
        files
    )
    assert {"optimizer.pt", "trainer_state.json"} <= set(hub.upload_files(checkpoint, with_training_state=True))

    api = _FakeApi()
    ops = hub.push(checkpoint, "org/tiny-grpo", private=True, api=api)
    assert [op.path_in_repo for op in ops] == files
    assert all(Path(op.path_or_fileobj) == checkpoint / op.path_in_repo for op in ops)
    (name1, args1, kw1), (name2, args2, kw2) = api.calls
    assert (name1, args1, kw1) == ("create_repo", ("org/tiny-grpo",), {"repo_type": "model", "private": True,
                                                                         "exist_ok": True})  # fmt: skip
    assert name2 == "create_commit" and args2 == ("org/tiny-grpo",) and kw2["operations"] == ops
    assert kw2["commit_message"] == "llasa-grpo: upload checkpoint-2"


def test_push_cli_dry_run_and_errors(checkpoint, tmp_path, capsys, monkeypatch):
    assert hub.main([str(checkpoint), "org/tiny-grpo", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would upload {len(hub.upload_files(checkpoint))} files" in out and "  model.safetensors" in out
    assert "optimizer.pt" not in out
    assert hub.main([str(tmp_path), "org/x", "--dry-run"]) == 2
    assert "not a model folder (needs config.json" in capsys.readouterr().err
    assert hub.main([str(checkpoint), "not-a-repo-id", "--dry-run"]) == 2
    assert "expected a Hub repo id like 'org/name'" in capsys.readouterr().err
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert hub.main([str(checkpoint), "org/x"]) == 2  # refused before any network call
    assert "no Hugging Face token: run `huggingface-cli login` or set HF_TOKEN" in capsys.readouterr().err
