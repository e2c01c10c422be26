"""Compare checkpoints on one evaluation set, in numbers and pictures.

    python evaluate.py --config tiny.toml --checkpoints base=tiny-llasa grpo=runs/tiny/checkpoint-6 \\
        --data data/eval_tiny.jsonl --samples 4 --temperatures 0.7,1.0 --out runs/eval_tiny

(installed: ``llasa-grpo evaluate``, same options)

Every checkpoint answers every text ``--samples`` times at each temperature with the same seeds and the
config's other sampling parameters (HF generate, as in training). All completions are then decoded once and
transcribed once through the training hook and scored by the training terms, so the numbers are the ones the
reward sees. Writes report.md, metrics.json, samples.jsonl, audio/ and PNG plots to ``--out``.
``--protocol seedtts`` measures WER and SIM the way Seed-TTS-eval does (``evaluation.protocol``; what cannot be
met offline is replaced and printed as a caveat), ``--dnsmos`` adds DNSMOS SIG/BAK/OVRL per clip.
A checkpoint is a folder ``transformers`` loads (a training checkpoint-N, a downloaded model) or a
``model.path`` name (a Hugging Face id, or ``tiny-llasa``).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.protocol import PROTOCOLS, ProtocolChoice
from tomlconfig import ConfigError

OUTPUT_FILES = ("report.md", "metrics.json", "samples.jsonl")


@dataclass(frozen=True)
class Checkpoint:
    name: str
    spec: str  # as given on the command line
    path: str  # what from_pretrained loads: a folder or a hub id


def parse_args(argv: Sequence[str] | None, prog: str | None = None) -> argparse.Namespace:
    from llasa_grpo.config import keys_help  # reads no model code: --help stays quick

    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.split("\n")[0],
        epilog=keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="the training TOML (model format, codec, transcriber, reward)")
    p.add_argument(
        "--checkpoints", nargs="+", required=True, metavar="NAME=PATH", help="the first is the base of differences"
    )
    p.add_argument("--data", required=True, help=".jsonl or .csv of texts (same format as training data)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--samples", type=int, default=4, help="samples per text, checkpoint and temperature (>= 2)")
    p.add_argument("--temperatures", help="comma-separated, e.g. 0.7,1.0 (default: generation.temperature)")
    p.add_argument("--seed", type=int, default=0, help="generation and bootstrap seed")
    p.add_argument("--limit", type=int, default=0, help="use only the first N texts (0: all)")
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="project",
        help="seedtts: Seed-TTS-eval's ASR model, WER normalisation and SIM model (caveats printed where not met)",
    )
    p.add_argument(
        "--normalization",
        choices=("project", "seedtts"),
        help="text normalisation for WER/CER (default: the protocol's; project: the training reward's)",
    )
    p.add_argument(
        "--sim-model",
        metavar="NAME",
        help="speaker model for SIM: 'resemblyzer' or a WavLMForXVector id/folder (default: the protocol's, "
        "else reward.speaker_model)",
    )
    p.add_argument("--dnsmos", action="store_true", help="measure DNSMOS SIG/BAK/OVRL per clip (speechmos, CPU)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the intervals")
    p.add_argument("--prompts-per-batch", type=int, default=8, help="texts per generate call")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config key")
    p.add_argument("--overwrite", action="store_true", help="replace a previous report in --out")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    if args.samples < 2:
        p.error(f"--samples {args.samples}: use at least 2 (samples of a text form one generation group)")
    if args.prompts_per_batch < 1 or args.bootstrap < 1:
        p.error("--prompts-per-batch and --bootstrap must be >= 1")
    return args


def parse_checkpoints(specs: Sequence[str], offline_names: Sequence[str]) -> list[Checkpoint]:
    """``NAME=PATH`` (or a bare PATH, named by its folder) → checkpoints; a bad one is named in the error."""
    out: list[Checkpoint] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec.rstrip("/")).name or spec, spec
        where = f"--checkpoints {spec}"
        if not name or not path:
            raise ConfigError(f"{where}: expected NAME=PATH, e.g. grpo=runs/x/checkpoint-500")
        if any(c.name == name for c in out):
            raise ConfigError(f"{where}: the name {name!r} is used twice; give each checkpoint its own NAME=")
        local = Path(path).expanduser()
        if path in offline_names:
            from llasa_grpo import recipe

            out.append(Checkpoint(name, spec, recipe.resolve_asset(path)))
            continue
        if local.is_dir():
            if not (local / "config.json").is_file():
                runs = sorted(
                    local.glob("checkpoint-*"),
                    key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1,
                )
                hint = f"; it is a run folder, e.g. use {runs[-1]}" if runs else ""
                raise ConfigError(f"{where}: {local} has no config.json, so it is not a model folder{hint}")
        elif local.exists():
            raise ConfigError(f"{where}: {local} is a file; give the model folder (with config.json)")
        elif path.startswith((".", "/", "~")) or path.count("/") != 1:
            raise ConfigError(f"{where}: no such folder {local} (and not a Hugging Face id like 'org/name')")
        out.append(Checkpoint(name, spec, path))
    return out


def check_resources(cfg: Any, checkpoints: Sequence[Checkpoint], source: str) -> None:
    """The recipe's preflight (codec, transcriber, data), then each checkpoint that is not a local folder."""
    from llasa_grpo import recipe

    def with_model(path: str) -> Any:
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=path))

    recipe.check_resources(with_model(recipe.TINY_MODEL), source=source)  # offline names are never checked
    for ckpt in checkpoints:
        if not Path(ckpt.path).is_dir():
            try:
                recipe.check_resources(with_model(ckpt.path), source=source)
            except ConfigError as e:
                raise ConfigError(f"--checkpoints {ckpt.spec}: {e}") from None


def parse_temperatures(text: str | None, default: float) -> list[float]:
    if not text:
        return [default]
    try:
        temps = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"--temperatures {text}: expected comma-separated numbers, e.g. 0.7,1.0") from None
    if not temps or any(t <= 0 for t in temps) or len(set(temps)) != len(temps):
        raise ConfigError(f"--temperatures {text}: need distinct values > 0")
    return temps


def batch_seed(seed: int, temperature_index: int, batch_index: int) -> int:
    """The generation seed of one batch of texts: the same for every checkpoint, so samples are paired."""
    return int(np.random.SeedSequence([seed, temperature_index, batch_index]).generate_state(1)[0])


def generate_all(
    cfg: Any,
    checkpoints: Sequence[Checkpoint],
    examples: Sequence[Any],
    temperatures: Sequence[float],
    args: argparse.Namespace,
    device: Any,
) -> tuple[Any, list[Any]]:
    """(speech vocab, Rollouts with an ``eval_key`` in each meta row), checkpoint by checkpoint."""
    import torch
    from tqdm.auto import tqdm

    from evaluation.report import SampleKey
    from llasa_grpo import recipe
    from tts.llasa import SpeechVocab

    per = args.prompts_per_batch
    batches = [list(range(s, min(s + per, len(examples)))) for s in range(0, len(examples), per)]
    total = len(checkpoints) * len(temperatures) * len(batches)
    vocab0, out = None, []
    with tqdm(total=total, desc="generate", unit="batch", dynamic_ncols=True) as bar:
        for ckpt in checkpoints:
            ccfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=ckpt.path))
            try:
                tokenizer = recipe.load_tokenizer(ckpt.path, ccfg)
                vocab = SpeechVocab.from_tokenizer(tokenizer, cfg.model.stop_token)
                model = recipe.load_model(ckpt.path, ccfg, device).eval()
            except (ConfigError, ValueError) as e:
                raise ConfigError(f"--checkpoints {ckpt.spec}: {e}") from None
            vocab0 = vocab0 or vocab
            if (vocab.first_id, vocab.stop_id) != (vocab0.first_id, vocab0.stop_id):
                raise ConfigError(
                    f"--checkpoints {ckpt.spec}: speech tokens from id {vocab.first_id} (stop {vocab.stop_id}), but "
                    f"the first checkpoint's from {vocab0.first_id} (stop {vocab0.stop_id}): compare one vocabulary"
                )
            prompts = recipe.build_prompts(ccfg, examples, tokenizer, vocab)
            pad_id = recipe.padding_id(vocab)
            for ti, tau in enumerate(temperatures):
                # HF generate whatever [generation] backend training used: it samples from the global torch
                # RNG, which batch_seed resets, so every checkpoint draws the same random numbers
                gen = dataclasses.replace(cfg.generation, backend="hf", temperature=tau)
                gcfg = dataclasses.replace(ccfg, generation=gen)
                generator = recipe.build_generator(gcfg, model, vocab, pad_id, device, model_path=ckpt.path)
                for bi, rows in enumerate(batches):
                    bar.set_postfix_str(f"{ckpt.name} τ={tau:g}")
                    torch.manual_seed(batch_seed(args.seed, ti, bi))
                    rollouts = generator.generate([prompts[i].ids for i in rows], args.samples)
                    meta = tuple(
                        {**prompts[i].meta, "eval_key": SampleKey(ckpt.name, tau, i, k)}
                        for i in rows
                        for k in range(args.samples)
                    )
                    out.append(dataclasses.replace(rollouts, meta=meta))
                    bar.update()
            del model
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return vocab0, out


def choose_protocol(cfg: Any, examples: Sequence[Any], args: argparse.Namespace) -> ProtocolChoice:
    """The protocol's settings for this run (``evaluation.protocol.resolve``), its models looked up here (local
    folder, cache or reachable hub): a missing one is a caveat and a fallback, never a failure after generation."""
    from evaluation import protocol
    from llasa_grpo import recipe

    return protocol.resolve(
        args.protocol,
        transcriber=cfg.transcriber,
        config_speaker_model=cfg.reward.speaker_model,
        speaker_model=args.sim_model,
        normalization=args.normalization,
        transcriber_set=any(s.partition("=")[0].strip() == "transcriber.model" for s in args.set),
        languages={recipe.example_language(cfg, ex) for ex in examples},
        has_references=any(ex.ref_audio for ex in examples),
        available=recipe._hub_problem,
    )


def check_measures(cfg: Any, choice: ProtocolChoice, examples: Sequence[Any], args: argparse.Namespace) -> str | None:
    """What the measurements need, checked before any generation: --dnsmos's speechmos, the seedtts
    normalisation's zhon (and zhconv for Chinese rows), the SIM model. Returns the SIM model (None: no reference
    voices, or resemblyzer missing, which is said)."""
    from llasa_grpo import recipe
    from reward.speaker import RESEMBLYZER

    needed = {"speechmos": "--dnsmos"} if args.dnsmos else {}
    if choice.normalization == "seedtts":
        needed["zhon"] = "--normalization seedtts"
        if any(recipe.example_language(cfg, ex).split("-")[0].lower() == "zh" for ex in examples):
            needed["zhconv"] = "--normalization seedtts on Chinese rows"
    for package, flag in needed.items():
        if importlib.util.find_spec(package) is None:
            raise ConfigError(f"{flag}: needs {package}, which is not installed (pip install '.[eval]')")
    if not any(ex.ref_audio for ex in examples):
        return None
    model = choice.speaker_model
    if model == RESEMBLYZER:
        if importlib.util.find_spec("resemblyzer") is None:
            print("[eval] speaker similarity skipped: resemblyzer is not installed (pip install .[speaker])")
            return None
        return model
    problem = recipe._hub_problem("--sim-model" if args.sim_model else "reward.speaker_model", model, "config.json")
    if problem:
        raise ConfigError(problem)
    return model


def score_all(
    cfg: Any,
    vocab: Any,
    examples: Sequence[Any],
    batches: Sequence[Any],
    out_dir: Path,
    choice: ProtocolChoice,
    speaker_model: str | None,
    dnsmos: bool,
) -> list[Any]:
    """Decode and transcribe every completion once (the training hook), measure it, write its WAV."""
    from tqdm.auto import tqdm

    from evaluation.report import sample_record
    from llasa_grpo import recipe
    from tts.audio import save_audio
    from tts.constants import SAMPLE_RATE

    scorer = recipe.build_scorer(cfg, vocab, examples)  # decoder + transcriber + terms, as in training
    records = []
    with tqdm(total=sum(len(b) for b in batches), desc="decode+transcribe", unit="clip", dynamic_ncols=True) as bar:
        for rollouts in batches:
            scored = scorer.judge(rollouts)  # one batched decode, one transcriber call, every term
            for s, meta in zip(scored, rollouts.meta, strict=True):
                key = meta["eval_key"]
                rel = f"audio/{key.checkpoint}/t{key.temperature:g}/{key.text_index:04d}_{key.sample_index}.wav"
                save_audio(out_dir / rel, s.speech.audio, SAMPLE_RATE)
                records.append(
                    sample_record(
                        s.speech,
                        s.terms,
                        s.reward,
                        key,
                        scorer.config,
                        audio_path=rel,
                        normalization=choice.normalization,
                        speaker_model=speaker_model,
                        speaker_device=cfg.reward.speaker_device,
                        dnsmos=dnsmos,
                    )
                )
            bar.update(len(scored))
    return records


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = parse_args(argv, prog)
    started = time.perf_counter()
    from atomicfs import write_text
    from evaluation.plots import write_plots
    from evaluation.report import analyse, write_outputs
    from grpo.distributed import resolve_device
    from llasa_grpo import recipe  # torch/transformers: after argparse so --help is instant
    from tomlconfig import dump_toml
    from tts.data import DataError, load_examples

    out_dir = Path(args.out)
    try:
        checkpoints = parse_checkpoints(args.checkpoints, recipe.OFFLINE_MODELS)
        cfg = recipe.load(args.config, [*args.set, f"data.path={json.dumps(args.data)}"])
        check_resources(cfg, checkpoints, args.config)
        temperatures = parse_temperatures(args.temperatures, cfg.generation.temperature)
        if not args.overwrite and any((out_dir / f).exists() for f in OUTPUT_FILES):
            raise ConfigError(f"--out {out_dir}: holds a previous report; add --overwrite or choose another folder")
        examples = load_examples(
            cfg.data.path, max_bad_fraction=cfg.data.max_bad_fraction, check_audio=cfg.data.check_audio
        )
        examples = examples[: args.limit] if args.limit > 0 else examples
        choice = choose_protocol(cfg, examples, args)
        if choice.transcriber:
            cfg = dataclasses.replace(cfg, transcriber=dataclasses.replace(cfg.transcriber, **choice.transcriber))
        speaker_model = check_measures(cfg, choice, examples, args)
        for caveat in choice.caveats:
            print(f"[eval] caveat: {caveat}")
        device = resolve_device(cfg.run.device)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        vocab, batches = generate_all(cfg, checkpoints, examples, temperatures, args, device)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(out_dir / "config.resolved.toml", dump_toml(cfg))
        records = score_all(cfg, vocab, examples, batches, out_dir, choice, speaker_model, args.dnsmos)
    except (ConfigError, DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    g, t = cfg.generation, cfg.transcriber
    has_refs = any(ex.ref_audio for ex in examples)
    settings = {
        "config": args.config,
        "data": f"{args.data} ({len(examples)} texts)",
        "generation": f"max_new_tokens {g.max_new_tokens}, top_p {g.top_p}, top_k {g.top_k}, "
        f"repetition_penalty {g.repetition_penalty}",
        "transcriber": f"{t.backend} {t.model if t.backend == 'whisper' else t.url}, beam {t.beam_size}"
        f"{f', encoder window {t.window_s:g} s' if t.backend == 'whisper' else ''}",
        "normalization": choice.normalization,
        "protocol": choice.description,
        "speaker model": speaker_model
        or ("not measured (resemblyzer missing)" if has_refs else "not measured (no reference voices)"),
        "dnsmos": "speechmos DNSMOS P.835 (SIG, BAK, OVRL) per clip" if args.dnsmos else "not measured (--dnsmos)",
        "caveats": choice.caveats,
    }
    result = analyse(
        records,
        {c.name: c.spec.partition("=")[2] or c.spec for c in checkpoints},  # as given: tiny-llasa, runs/…
        temperatures,
        args.samples,
        resamples=args.bootstrap,
        seed=args.seed,
        settings=settings,
    )
    files = write_outputs(result, out_dir, None if args.no_plots else write_plots)
    table = files["report"].read_text(encoding="utf-8").split("## Summary\n\n")[1].split("\n\n")[0]
    print(f"{table}\n[eval] {len(records)} samples in {time.perf_counter() - started:.0f} s: {files['report']}")
    for path in update_model_cards(checkpoints, table, files["report"], args, len(examples), temperatures):
        print(f"[eval] model card updated: {path}")
    for caveat in choice.caveats:
        print(f"[eval] caveat: {caveat}")
    return 0


def update_model_cards(
    checkpoints: Sequence[Checkpoint],
    table: str,
    report: Path,
    args: argparse.Namespace,
    n_texts: int,
    temperatures: Sequence[float],
) -> list[Path]:
    """Refresh the evaluation section of each evaluated training checkpoint's model card (README.md)."""
    import datetime

    from grpo.checkpoint import MARKER
    from llasa_grpo.card import update_evaluation

    updated = []
    for ckpt in checkpoints:
        folder = Path(ckpt.path)
        if not (folder / MARKER).is_file():  # not a training checkpoint (a base model, a hub id)
            continue
        day = datetime.date.today().isoformat()
        section = (
            f"`evaluate.py` on {day}: `{args.data}` ({n_texts} texts × {args.samples} samples, temperature "
            f"{', '.join(f'{t:g}' for t in temperatures)}, seed {args.seed}); this checkpoint is the column "
            f"**{ckpt.name}**. Full report: `{report}`.\n\n{table}"
        )
        if (path := update_evaluation(folder, section)) is not None:
            updated.append(path)
    return updated


if __name__ == "__main__":
    sys.exit(main())
