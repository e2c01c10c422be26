"""The model card (``README.md``) of every checkpoint: what a Hub repo shows and what a reader needs to reuse it.

Written by the trainer at each save (``GRPOTrainer.model_card``, set by train.py): base model, tags, training
data, the reward terms and weights, the latest metrics and the resolved config. ``evaluate.py`` fills the
evaluation section between its two markers (``update_evaluation``), rewriting the file atomically.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from grpo.checkpoint import CARD_FILE  # the checkpoint writer keeps it out of its size check
from llasa_grpo.config import Config
from tomlconfig import dump_toml

EVAL_START, EVAL_END = "<!-- llasa-grpo:evaluation -->", "<!-- /llasa-grpo:evaluation -->"
NOT_EVALUATED = (
    "Not evaluated yet: `python evaluate.py --config CONFIG --checkpoints base=BASE grpo=THIS_FOLDER "
    "--data EVAL.jsonl --out DIR` writes its summary table here."
)


def _hub_id(name: str) -> str | None:
    """``name`` if it looks like a Hugging Face id ("org/name"), else None (a local folder, an offline name)."""
    if name.startswith((".", "/", "~")) or name.count("/") != 1 or Path(name).expanduser().exists():
        return None
    return name


def _value(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else "" if v is None else str(v)


def render_card(cfg: Config, step: int, metrics: Mapping[str, float], evaluation: str | None = None) -> str:
    """The README.md text of the checkpoint at ``step`` (``metrics``: that step's, empty if none were logged)."""
    base, g, o, r = cfg.model.path, cfg.grpo, cfg.optim, cfg.run
    name = r.run_name or Path(r.output_dir).name
    front = ["---"]
    if hub := _hub_id(base):
        front.append(f"base_model: {hub}")
    front += ["library_name: transformers", "pipeline_tag: text-to-speech", "tags:"]
    front += [f"- {t}" for t in ("text-to-speech", "llasa", "grpo", "llasa-grpo")]
    front.append("---")
    lines = [
        *front,
        "",
        f"# {name}: checkpoint-{step}",
        "",
        f"A Llasa-style text-to-speech language model fine-tuned with GRPO by llasa-grpo from `{base}`: step "
        f"{step} of {r.max_steps}. It loads with `AutoModelForCausalLM.from_pretrained`; its speech tokens decode to "
        f"audio with the X-Codec2 decoder `{cfg.codec.path}`.",
        "",
        "## Training",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{base}` |",
        f"| training data | `{cfg.data.path}` |",
        f"| codec | `{cfg.codec.path}` |",
        f"| steps | {step} of {r.max_steps} (seed {r.seed}) |",
        f"| GRPO | group_size {g.group_size}, batch_size {g.batch_size}, num_iterations {g.num_iterations}, "
        f"beta {g.beta}, eps_low {g.eps_low}, eps_high {g.eps_high}, loss_aggregation {g.loss_aggregation} |",
        f"| optimizer | AdamW, lr {o.lr}, {o.schedule} schedule, warmup_ratio {o.warmup_ratio} |",
        f"| sampling | temperature {cfg.generation.temperature}, top_p {cfg.generation.top_p}, "
        f"max_new_tokens {cfg.generation.max_new_tokens} |",
        "",
        "## Reward",
        "",
        "total = Σ w·r / Σ w over the terms that apply; a term below its gate scales the total by "
        f"gate_floor = {cfg.reward.gate_floor} (preset `{cfg.reward.preset}`, transcriber {cfg.transcriber.backend} "
        f"`{cfg.transcriber.model}`).",
        "",
        "| term | weight | gate |",
        "|---|---|---|",
        *(f"| {t} | {w:g} | {_value(cfg.reward.gates.get(t))} |" for t, w in cfg.reward.weights.items()),
        "",
        f"## Latest metrics (step {step})" if metrics else "## Latest metrics",
        "",
    ]
    shown = {k: v for k, v in sorted(metrics.items()) if not k.startswith("time/")}
    if shown:
        lines += ["| metric | value |", "|---|---|", *(f"| {k} | {_value(v)} |" for k, v in shown.items())]
    else:
        lines.append("No metrics logged yet.")
    lines += ["", "## Evaluation", "", EVAL_START, (evaluation or NOT_EVALUATED).strip(), EVAL_END, ""]
    lines += ["## Config", "", "<details><summary>the resolved config (TOML)</summary>", "", "```toml"]
    lines += [dump_toml(cfg).rstrip(), "```", "", "</details>", ""]
    return "\n".join(lines)


def card_writer(cfg: Config):
    """``GRPOTrainer.model_card``: (step, latest metrics) → README.md text."""
    return lambda step, metrics: render_card(cfg, step, metrics)


def update_evaluation(directory: str | Path, section: str) -> Path | None:
    """Put ``section`` between the evaluation markers of ``directory``'s README.md (appended with them if the
    card has none); None when the folder has no card. Atomic: a reader sees the old or the new file."""
    from atomicfs import write_text

    path = Path(directory) / CARD_FILE
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    block = f"{EVAL_START}\n{section.strip()}\n{EVAL_END}"
    start, end = text.find(EVAL_START), text.find(EVAL_END)
    if 0 <= start < end:
        text = text[:start] + block + text[end + len(EVAL_END) :]
    else:
        text = text.rstrip("\n") + f"\n\n## Evaluation\n\n{block}\n"
    return write_text(path, text)
