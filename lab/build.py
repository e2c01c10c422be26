"""``python -m lab build``: corpus -> codec -> codes -> LM, each stage resumable, then a written summary.

Every stage writes its result into ``--out`` and is skipped when that result exists, so an interrupted build
continues where it stopped; ``--toy`` runs the whole chain at a size that takes seconds (tests use it).
The decoder-only stage runs in a child process beside the first SFT phase, one thread each: it reads and
writes only the codec folder, and the LM reads only the codes, which its fixed encoder wrote before; a second
decoder-only phase follows the LM, on both threads.
The final assets are ``OUT/codec`` (lab-xcodec2) and ``OUT/llasa`` (lab-llasa); ``OUT/summary.json`` holds
sizes, times and the measurements of ``lab.report``. ``OUT/snapshots/<phase>/step-K`` keep the LM along the way
(each phase's end, and every ``snapshot_every`` steps of the later phases): how imperfectly a model speaks is
what GRPO needs, and it depends on how far the SFT went. ``--codec FOLDER`` (or ``lab-xcodec2``) reuses a
trained codec instead of training one and rebuilds only the LM (its first two phases: 13 + 21 minutes here).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from lab.codec import CodecTrainConfig
from lab.sft import SFTConfig

DECODER_DONE = "decoder.done"  # marker in the codec folder: the decoder-only stage has run
DECODER_LOG = "decoder_loss.json"  # in the build folder (the codec folder is what gets packed)
STAGES = ("corpus", "codec", "encode", "decoder", "sft", "sft2", "decoder2", "report")  # *2: all later phases


@dataclass(frozen=True)
class BuildConfig:
    num_sentences: int = 3000
    num_heldout: int = 200
    num_lm: int = 300
    seed: int = 0
    codec: CodecTrainConfig = field(default_factory=CodecTrainConfig)
    # decoder-only training on the fixed encoder's codes, longer crops; independent of the LM stage, so it
    # runs beside the first SFT phase, each on one thread (decoder_beside_sft)
    decoder: CodecTrainConfig = field(
        default_factory=lambda: CodecTrainConfig(
            steps=2000, batch=8, crop_frames=128, lr=5e-4, min_lr=5e-5, seed=1, threads=1
        )
    )
    decoder_beside_sft: bool = True
    # further decoder-only phases after the LM, each from the previous decoder with a fresh cosine schedule (the
    # codes stay those the LM learnt); the first stage's loss was still falling, and its WER missed the bound
    decoder_more: tuple[CodecTrainConfig, ...] = (
        CodecTrainConfig(steps=1500, batch=8, crop_frames=128, lr=3e-4, min_lr=3e-5, warmup=20, seed=3, threads=2),
    )
    sft: SFTConfig = field(default_factory=lambda: SFTConfig(threads=1))
    # further SFT phases, each from the previous phase's model with a fresh (lower) cosine schedule
    sft_more: tuple[SFTConfig, ...] = (
        SFTConfig(steps=1500, lr=6e-4, min_lr=2e-5, warmup=50, seed=1, snapshot_every=300),
        SFTConfig(steps=1200, lr=3e-4, min_lr=1e-5, warmup=20, seed=2, snapshot_every=300),
    )
    report_sentences: int = 16  # per group in the summary's WER measurements
    report_temperatures: tuple[float, ...] = (0.6, 0.8, 1.0)
    report_max_new_tokens: int = 400


TOY = BuildConfig(
    num_sentences=24,
    num_heldout=4,
    num_lm=6,
    codec=CodecTrainConfig(steps=3, batch=2, crop_frames=16, warmup=1),
    decoder=CodecTrainConfig(steps=2, batch=2, crop_frames=16, warmup=1),
    decoder_more=(CodecTrainConfig(steps=2, batch=2, crop_frames=16, warmup=1, seed=3),),
    sft=replace(SFTConfig(), steps=3, batch=2, hidden=32, layers=1, heads=2, vocab=300, warmup=1),
    sft_more=(
        replace(
            SFTConfig(), steps=2, batch=2, hidden=32, layers=1, heads=2, vocab=300, warmup=1, seed=1, snapshot_every=1
        ),
    ),
    report_sentences=2,
    report_temperatures=(1.0,),
    report_max_new_tokens=40,
)


def load_wavs(corpus: Path, utts: list) -> list[np.ndarray]:
    from tts.audio import load_audio

    return [load_audio(corpus / u.audio) for u in utts]


def train_decoder(
    corpus_dir: Path,
    codec_dir: Path,
    cfg: CodecTrainConfig,
    log_file: Path,
    done: str = DECODER_DONE,
    bar_position: int = 0,
) -> None:
    """A decoder-only stage: train the decoder on the fixed encoder's codes, save, write the log, mark done.

    A top-level function, so that the build can run it in a child process beside the first SFT phase."""
    from lab import corpus as corpus_mod
    from lab.codec import LabEncoder, save_codec, train_codec
    from tts.codec import XCodec2Decoder

    t0 = time.time()
    train = [u for u in corpus_mod.read_manifest(corpus_dir) if u.split == "train"]
    init = (LabEncoder.from_pretrained(codec_dir), XCodec2Decoder.from_pretrained(codec_dir))
    enc, dec, log = train_codec(load_wavs(corpus_dir, train), cfg, init=init, bar_position=bar_position)
    save_codec(codec_dir, enc, dec)  # same encoder weights, so codes.npz stays valid
    _write_json(log_file, {"seconds": round(time.time() - t0, 1), "loss": log})
    (codec_dir / done).write_text("decoder trained on the fixed encoder\n")


def build(out: Path, cfg: BuildConfig, stages: tuple[str, ...] = STAGES, codec: str | None = None) -> dict:
    """Run the stages that have no result in ``out`` yet; ``codec``: reuse that trained codec (``seed_codec``)."""
    from lab import corpus as corpus_mod
    from lab.codec import LabEncoder, save_codec, train_codec

    started = time.time()
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "summary.json"
    summary: dict = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary["config"] = asdict(cfg)
    if codec:
        seed_codec(out, codec, cfg)
        summary["codec_reused"] = codec
    times = summary.setdefault("seconds", {})
    corpus_dir, codec_dir, codes_file, llasa_dir = out / "corpus", out / "codec", out / "codes.npz", out / "llasa"

    def timed(name: str, fn: Callable[[], object]) -> None:
        t0 = time.time()
        fn()
        times[name] = round(time.time() - t0, 1)
        _write_json(summary_path, summary)

    def record_decoder(name: str, log_file: Path) -> None:  # a decoder stage times itself (it may be a child)
        got = json.loads(log_file.read_text())
        times[name], summary[f"{name}_loss"] = got["seconds"], got["loss"]
        _write_json(summary_path, summary)

    if "corpus" in stages and not (corpus_dir / "manifest.jsonl").is_file():
        timed(
            "corpus",
            lambda: corpus_mod.build_corpus(
                corpus_dir,
                num_sentences=cfg.num_sentences,
                num_heldout=cfg.num_heldout,
                num_lm=cfg.num_lm,
                seed=cfg.seed,
            ),
        )
    utts = corpus_mod.read_manifest(corpus_dir)
    if "codec" in stages and not (codec_dir / "model.safetensors").is_file():

        def codec_stage() -> None:
            train = [u for u in utts if u.split == "train"]
            enc, dec, log = train_codec(load_wavs(corpus_dir, train), cfg.codec)
            save_codec(codec_dir, enc, dec)
            summary["codec_loss"] = log

        timed("codec", codec_stage)
    if "encode" in stages and not codes_file.is_file():

        def encode_stage() -> None:
            import torch
            from tqdm import tqdm

            enc = LabEncoder.from_pretrained(codec_dir)
            codes = {}
            with torch.inference_mode():
                for u in tqdm(utts, desc="[lab] encode", unit="utt"):
                    wav = load_wavs(corpus_dir, [u])[0]
                    codes[u.id] = enc.encode(torch.from_numpy(wav)[None])[0].numpy().astype(np.int32)
            np.savez_compressed(codes_file, **codes)

        timed("encode", encode_stage)
    decoder_pending = "decoder" in stages and not (codec_dir / DECODER_DONE).is_file()
    sft_pending = "sft" in stages and not (llasa_dir / "config.json").is_file()

    beside = decoder_pending and sft_pending and cfg.decoder_beside_sft

    def keep_phase_end(name: str, steps: int) -> None:  # the next phase overwrites llasa_dir
        shutil.copytree(llasa_dir, out / "snapshots" / name / f"step-{steps}", dirs_exist_ok=True)

    def sft_stage() -> None:
        from lab.sft import train_lm

        codes = dict(np.load(codes_file))
        sentences = corpus_mod.sentences(cfg.num_sentences, cfg.seed)
        sft = cfg.sft if beside else replace(cfg.sft, threads=SFTConfig.threads)  # alone: both threads
        summary["sft_loss"] = train_lm(llasa_dir, utts, codes, sft, sentences=sentences)
        keep_phase_end("sft", sft.steps)

    if beside:
        # Two one-thread jobs use the two cores better than one two-thread job after the other (each scales
        # only ~1.5x to two threads), and the decoder touches nothing the LM reads (the encoder stays fixed).
        import multiprocessing

        child = multiprocessing.get_context("spawn").Process(
            target=train_decoder,
            args=(corpus_dir, codec_dir, cfg.decoder, out / DECODER_LOG, DECODER_DONE, 1),  # its bar on line 2
            name="lab-decoder",
        )
        child.start()
        try:
            timed("sft", sft_stage)
        except BaseException:
            child.terminate()  # its stage stays pending (decoder.done is written last), so a rerun redoes it
            raise
        finally:
            child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"[lab] the decoder stage (a child process) failed with exit code {child.exitcode}")
    else:
        if decoder_pending:
            train_decoder(corpus_dir, codec_dir, cfg.decoder, out / DECODER_LOG)
        if sft_pending:
            timed("sft", sft_stage)
    if decoder_pending:
        record_decoder("decoder", out / DECODER_LOG)
    for i, phase in enumerate(cfg.sft_more):
        done = llasa_dir / f"sft{i + 2}.done"
        if "sft2" not in stages or done.is_file():
            continue
        from lab.sft import train_lm

        def sft_more_stage(phase: SFTConfig = phase, i: int = i, done: Path = done) -> None:
            codes = dict(np.load(codes_file))
            sentences = corpus_mod.sentences(cfg.num_sentences, cfg.seed)
            snapshots = out / "snapshots" / f"sft{i + 2}"
            log = train_lm(llasa_dir, utts, codes, phase, sentences=sentences, init_dir=llasa_dir, snapshots=snapshots)
            summary[f"sft{i + 2}_loss"] = log
            keep_phase_end(f"sft{i + 2}", phase.steps)
            done.write_text(f"SFT phase {i + 2} done\n")

        timed(f"sft{i + 2}", sft_more_stage)
    for i, phase in enumerate(cfg.decoder_more):
        name = f"decoder{i + 2}"
        if "decoder2" not in stages or (codec_dir / f"{name}.done").is_file():
            continue
        train_decoder(corpus_dir, codec_dir, phase, out / f"{name}_loss.json", f"{name}.done")
        record_decoder(name, out / f"{name}_loss.json")
    if "report" in stages:
        from lab.report import measure

        timed(
            "report",
            lambda: summary.update(
                report=measure(
                    out,
                    utts,
                    cfg.report_sentences,
                    seed=cfg.seed,
                    temperatures=cfg.report_temperatures,
                    max_new_tokens=cfg.report_max_new_tokens,
                )
            ),
        )
    # wall time over every invocation (the stages' own times overlap where the decoder ran beside the LM)
    summary["seconds_total"] = round(summary.get("seconds_total", 0.0) + time.time() - started, 1)
    _write_json(summary_path, summary)
    return summary


def seed_codec(out: Path, codec: str, cfg: BuildConfig) -> Path:
    """Copy a trained codec into a new build folder as if its codec and decoder stages had run.

    The corpus and codes are then made as usual (the codes by this codec's encoder); a build folder that has a
    codec already keeps it (a rerun of the same command continues the build)."""
    from lab.assets import LAB_CODEC, asset_path

    codec_dir = out / "codec"
    if (codec_dir / "model.safetensors").is_file():
        return codec_dir
    src = asset_path(LAB_CODEC) if codec == LAB_CODEC else Path(codec)
    if not (src / "model.safetensors").is_file() or not (src / "config.json").is_file():
        raise FileNotFoundError(f"[lab] --codec {codec}: {src} holds no codec (model.safetensors + config.json)")
    tmp = out / "codec.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    for name in [DECODER_DONE] + [f"decoder{i + 2}.done" for i in range(len(cfg.decoder_more))]:
        (tmp / name).write_text(f"reused from {codec}\n")
    tmp.rename(codec_dir)  # whole or not at all
    return codec_dir


def _write_json(path: Path, obj: object) -> None:
    from atomicfs import write_text

    write_text(path, json.dumps(obj, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m lab build", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/lab-build"), help="build folder (resumable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--toy", action="store_true", help="seconds-sized run of every stage (for tests)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--codec", help="reuse this trained codec (a folder, or lab-xcodec2) instead of training one")
    args = p.parse_args(argv)
    stages = tuple(s for s in args.stages.split(",") if s)
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        p.error(f"--stages: unknown {unknown}; known: {list(STAGES)}")
    cfg = replace(TOY if args.toy else BuildConfig(), seed=args.seed)
    summary = build(args.out, cfg, stages, codec=args.codec)
    print(json.dumps({k: summary[k] for k in ("seconds", "seconds_total", "report") if k in summary}, indent=2))


def pack_build(
    build_dir: Path, repo: Path, *, llasa: str = "llasa", train_rows: int = 32, heldout_rows: int = 32
) -> dict[str, Path]:
    """Copy a finished build into the repository form: ``lab/assets/{llasa,codec}`` and the lab data files.

    ``llasa``: the LM folder inside the build, the final model or a snapshot (``snapshots/sft2/step-900``); the
    packed model records it, with the build's seed and reused codec, in ``provenance.json``.

    Data: ``data/lab_train.jsonl`` (seen sentences, plain prompts), ``data/lab_heldout.jsonl`` (unseen),
    ``data/lab_clone.jsonl`` (seen sentences with a reference clip of one of their two voices, from
    ``data/lab_refs/``: one short clip per speaker, another sentence of that speaker).
    """
    from atomicfs import write_text
    from lab import corpus as corpus_mod
    from lab.assets import pack

    utts = corpus_mod.read_manifest(build_dir / "corpus")
    model = build_dir / llasa
    if not (model / "config.json").is_file():
        raise FileNotFoundError(f"[lab] pack: {model} holds no model (config.json); see {build_dir / 'snapshots'}")
    summary = json.loads((build_dir / "summary.json").read_text())
    packed = pack(model, repo / "lab" / "assets" / "llasa")
    provenance = {
        "build": build_dir.name,
        "model": llasa,
        "seed": summary["config"]["seed"],
        "codec_reused": summary.get("codec_reused"),
    }
    write_text(packed / "provenance.json", json.dumps(provenance) + "\n")
    pack(build_dir / "codec", repo / "lab" / "assets" / "codec")
    sft = summary["config"]["sft"]
    seen = list({u.text: u for u in utts if u.lm and u.split == "train"}.values())[: sft["max_sentences"]]
    heldout = [u for u in utts if u.split == "heldout"]

    def rows(us: list, **extra: str) -> str:
        return "".join(json.dumps({"text": u.text, "language": "en", **extra}) + "\n" for u in us)

    data = repo / "data"
    refs_dir = data / "lab_refs"
    refs_dir.mkdir(parents=True, exist_ok=True)
    seen_texts = {u.text for u in seen}
    refs = {}
    for spk in corpus_mod.SPEAKERS:  # the shortest seen utterance of each speaker
        mine = [u for u in utts if u.speaker == spk.name and u.text in seen_texts]
        ref = min(mine, key=lambda u: (len(u.text), u.id))
        shutil.copy2(build_dir / "corpus" / ref.audio, refs_dir / f"{spk.name}.wav")
        refs[spk.name] = ref
    clone = []
    for u in [u for u in utts if u.text in seen_texts][: 2 * train_rows]:
        ref = refs[u.speaker]
        if ref.text != u.text:
            row = {
                "text": u.text,
                "language": "en",
                "ref_audio": f"lab_refs/{u.speaker}.wav",
                "ref_text": ref.text,
            }
            clone.append(json.dumps({**row, "speaker": u.speaker}) + "\n")
    files = {
        "train": write_text(data / "lab_train.jsonl", rows(seen[:train_rows])),
        "heldout": write_text(data / "lab_heldout.jsonl", rows(heldout[:heldout_rows])),
        "clone": write_text(data / "lab_clone.jsonl", "".join(clone)),
    }
    return files
