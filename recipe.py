"""The Llasa GRPO recipe: the root config (one TOML section per concern) and the components built from it.

``train.py`` and ``evaluate.py`` share this module, so both read the same TOML and build the same model,
tokenizer, prompts, generator and scorer:

    cfg = load(path, overrides)          # checked before anything loads
    check_resources(cfg)                 # model / codec / transcriber / data reachable, else names the key
    parts = build_components(cfg, device)
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from grpo.config import (
    ConfigError,
    FieldError,
    GenerationConfig,
    GRPOConfig,
    OptimConfig,
    RunConfig,
    TrainingConfig,
    load_config,
)
from grpo.generation import HFGenerator
from grpo.rollouts import Generator
from grpo.trainer import Prompt, autocast_factory
from reward.config import RewardConfig, TranscriberConfig
from tts.config import CodecConfig, DataConfig, ModelConfig, ReferenceConfig, torch_dtype

# Names that resolve to assets the project builds or assembles offline (no hub needed).
TINY_MODEL, TINY_CODEC, OFFLINE_WHISPER = "tiny-llasa", "tiny-xcodec2", "whisper-base-pypi"


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    transcriber: TranscriberConfig = field(default_factory=TranscriberConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        if not self.data.path:
            raise FieldError("data.path", self.data.path, "set it to a .jsonl or .csv file of rows with 'text'")

    @property
    def training(self) -> TrainingConfig:
        return TrainingConfig(generation=self.generation, grpo=self.grpo, optim=self.optim, run=self.run)


def load(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    return load_config(Config, path, overrides)


# --------------------------------------------------------------------------------------------------------------
# Preflight: everything a run needs from disk or the hub, checked in seconds and reported together


def _hub_problem(key: str, name: str, probe_file: str, repo: str | None = None) -> str | None:
    """None if ``name`` is a local folder, cached, or the hub is reachable; else why not, naming ``key``.

    ``repo`` is the hub id ``name`` stands for, when it is a short name (faster-whisper's "medium").
    """
    if Path(name).expanduser().exists():
        return None
    repo = repo or name
    if repo.startswith((".", "/", "~")) or repo.count("/") != 1:
        return f"{key}={name!r}: no such folder (and not a Hugging Face id like 'org/name')"
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo, probe_file), str):
        return None
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    fix = f"download it where there is network (huggingface-cli download {repo} --local-dir DIR) and set {key} = DIR"
    if constants.HF_HUB_OFFLINE:
        return f"{key}={name!r}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set: {fix}"
    error = _unreachable(host)
    if error:
        return f"{key}={name!r}: not a local folder, not cached, and {host} is unreachable ({error}): {fix}"
    return None  # reachable: from_pretrained downloads it (and reports a wrong name itself)


@functools.cache
def _unreachable(host: str) -> str | None:
    """Why ``host`` cannot be reached, or None; asked once per process (the preflight checks several keys)."""
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as e:
        return str(e)
    return None


def _service_problem(transcriber: TranscriberConfig) -> str | None:
    """None if the transcription service answers /health, else why not (naming transcriber.url)."""
    from reward.client import HTTPTranscriber, TranscriberUnavailable

    try:
        HTTPTranscriber(transcriber).health()
    except TranscriberUnavailable as e:
        return str(e).removeprefix("[transcriber] ").replace("url=", "transcriber.url=", 1)
    return None


def check_resources(cfg: Config, source: str = "config") -> None:
    """Fail fast, before any model loads, with every missing resource named by its config key."""
    problems = []
    if cfg.model.path != TINY_MODEL:
        problems.append(_hub_problem("model.path", cfg.model.path, "config.json"))
    if cfg.codec.path != TINY_CODEC:
        problems.append(_hub_problem("codec.path", cfg.codec.path, "model.safetensors"))
    if cfg.transcriber.backend == "whisper" and cfg.transcriber.model != OFFLINE_WHISPER:
        name = cfg.transcriber.model
        repo = name if "/" in name else f"Systran/faster-whisper-{name}"  # faster-whisper's size names
        problems.append(_hub_problem("transcriber.model", name, "model.bin", repo))
    if cfg.transcriber.backend == "http":
        problems.append(_service_problem(cfg.transcriber))
    if not Path(cfg.data.path).expanduser().is_file():
        problems.append(f"data.path={cfg.data.path!r}: no such file (rows of text, language, ref_audio, ref_text)")
    problems = [p for p in problems if p]
    if problems:
        raise ConfigError(f"{source}: cannot start:\n  " + "\n  ".join(problems))


# --------------------------------------------------------------------------------------------------------------
# Components


@dataclass
class Components:
    model: nn.Module  # the policy, on its device, float32 master weights unless model.dtype says otherwise
    tokenizer: Any
    vocab: Any  # tts.llasa.SpeechVocab
    pad_id: int
    prompts: list[Prompt]
    generator: Generator
    scorer: Any  # reward.scorer.SpeechScorer (Scorer + SampleWriter)
    ref_model: nn.Module | None
    examples: list[Any] = field(default_factory=list)  # tts.data.Example


def resolve_paths(cfg: Config) -> tuple[str, str]:
    """(model path, codec path) with the offline tiny names built on first use."""
    model, codec = cfg.model.path, cfg.codec.path
    if TINY_MODEL in (model, codec) or TINY_CODEC in (model, codec):
        from tts.tiny import tiny_assets

        tiny_model, tiny_codec = tiny_assets()
        model = str(tiny_model) if model == TINY_MODEL else model
        codec = str(tiny_codec) if codec == TINY_CODEC else codec
    return model, codec


def load_model(path: str, cfg: Config, device: torch.device) -> nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(cfg.model.dtype, key="model.dtype"))
    except OSError as e:
        raise ConfigError(f"model.path={cfg.model.path!r}: cannot load a causal LM from {path}: {e}") from None
    return model.to(device)


def load_tokenizer(path: str, cfg: Config) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise ConfigError(f"model.path={cfg.model.path!r}: cannot load its tokenizer from {path}: {e}") from None


def example_language(cfg: Config, ex: Any) -> str:
    """The one language rule: the row's ``language`` if it has one, else ``transcriber.language``.

    It is stored in each prompt's meta, and transcription and text normalisation both read it from there.
    """
    language = ex.language or cfg.transcriber.language
    if not language:
        raise ConfigError(
            f"data.path={cfg.data.path!r} line {ex.line}: no 'language' in the row and transcriber.language "
            "is not set: give every row a language or set transcriber.language"
        )
    return language


def build_prompts(cfg: Config, examples: Sequence[Any], tokenizer: Any, vocab: Any) -> list[Prompt]:
    """Token ids per data row (reference codes appended when cloning) and the row as meta for the scorer.

    ``text`` and ``ref_text`` go through the same [data] normaliser (its character set comes from both), and
    meta carries what the prompt was built from: the normalised texts, the resolved ``language`` and, when
    cloning, the reference ``ref_codes`` (the hook decodes them in front of the completion).
    """
    from tts.llasa import build_prompt_ids
    from tts.reference import ReferenceCodes

    fmt = cfg.model.prompt_format()
    normalizer = cfg.data.normalizer([t for e in examples for t in (e.text, e.ref_text) if t])

    def normalize(text: str | None) -> str | None:
        return normalizer.normalize(text)[0] if normalizer and text is not None else text

    refs = ReferenceCodes(cfg.reference.codec, cfg.reference.cache_dir or None)
    prompts = []
    for ex in examples:
        text, ref_text, language = normalize(ex.text), normalize(ex.ref_text), example_language(cfg, ex)
        codes = refs.get(ex.ref_audio) if ex.ref_audio else None
        try:
            ids = build_prompt_ids(tokenizer, fmt, text, ref_text=ref_text, ref_codes=codes, vocab=vocab)
        except ValueError as e:
            raise ConfigError(f"data.path={cfg.data.path!r} line {ex.line}: {e}") from None
        meta = {**ex.meta(), "text": text, "ref_text": ref_text, "language": language, "ref_codes": codes}
        prompts.append(Prompt(ids=tuple(ids), meta=meta))
    return prompts


def build_scorer(cfg: Config, vocab: Any, examples: Sequence[Any]) -> Any:
    """Decoder + transcriber + reward terms (``reward.scorer.SpeechScorer``)."""
    from reward.audio_features import speech_activity
    from reward.hook import SpeechHook
    from reward.rate import reference_pause_limits, reference_rate_band
    from reward.scorer import SpeechScorer
    from reward.transcribe import make_transcriber
    from tts.audio import load_audio
    from tts.codec import XCodec2Decoder
    from tts.data import reference_durations

    # the speaking-rate band and the pause allowances: from the data's reference clips (enough of them), measured
    # as the terms measure a rollout (letters per second of speech, the same pause detector)
    reference_durations(examples)  # every reference file readable and not empty, else the data line is named
    first: dict[str, Any] = {}  # each reference clip once, with the first row that uses it
    for ex in examples:
        if ex.ref_audio and ex.ref_text:
            first.setdefault(ex.ref_audio, ex)
    activity = {
        path: speech_activity(load_audio(path), cfg.reward.pause_below_peak_db, cfg.reward.pause_min_s)
        for path in first
    }
    references = [(ex.ref_text, example_language(cfg, ex), activity[path].speech_s) for path, ex in first.items()]
    band, _ = reference_rate_band(references, cfg.reward)
    pauses, _ = reference_pause_limits(list(activity.values()), cfg.reward)
    _, codec_path = resolve_paths(cfg)
    decoder = XCodec2Decoder.from_pretrained(
        codec_path, device=cfg.codec.device, dtype=torch_dtype(cfg.codec.dtype, key="codec.dtype")
    )
    transcriber = make_transcriber(cfg.transcriber)
    hook = SpeechHook(vocab, _BatchedDecoder(decoder, cfg.codec), transcriber, cfg.codec.decode_with_reference)
    return SpeechScorer(hook, cfg.reward, rate_band=band, pause_limits=pauses)


class _BatchedDecoder:
    """The decoder with the [codec] batch settings applied (the hook calls ``decode_batch(codes)``)."""

    def __init__(self, decoder: Any, cfg: CodecConfig) -> None:
        self.decoder, self.cfg = decoder, cfg

    def decode_batch(self, codes: Sequence[Any]) -> list[Any]:
        return self.decoder.decode_batch(codes, batch_size=self.cfg.batch_size, exact=self.cfg.exact_batches)


def build_generator(
    cfg: Config, model: nn.Module, vocab: Any, pad_id: int, device: torch.device, *, model_path: str | None = None
) -> Generator:
    """The ``[generation] backend``: same sampling parameters whichever engine samples."""
    gen = cfg.generation
    if gen.backend == "hf":
        autocast = autocast_factory(device, cfg.run.precision)
        return HFGenerator(model, gen, pad_id=pad_id, stop_ids=[vocab.stop_id], autocast=autocast)
    from grpo.engine import Sampling, VLLMEngine, VLLMSettings
    from grpo.engine_generation import EngineGenerator, ServerGenerator

    # No per-request seed: the engine is seeded once (run.seed), so successive steps sample differently.
    sampling = Sampling.from_config(gen, [vocab.stop_id])
    if gen.backend == "vllm_server":
        vocab_size = model.get_output_embeddings().weight.shape[0]
        return ServerGenerator(
            gen.server_url, sampling, pad_id=pad_id, vocab_size=vocab_size, timeout_s=gen.server_timeout_s
        )
    settings = VLLMSettings(
        model=model_path or resolve_paths(cfg)[0],
        gpu_memory_utilization=gen.vllm_gpu_memory_utilization,
        dtype=gen.vllm_dtype,
        enable_sleep_mode=gen.vllm_sleep,
        seed=cfg.run.seed,
    )
    return EngineGenerator(VLLMEngine(settings), sampling, pad_id=pad_id)


def build_components(cfg: Config, device: torch.device, *, model_path: str | None = None) -> Components:
    """Everything a run needs. ``model_path`` overrides ``model.path`` (evaluate.py: a checkpoint)."""
    from tts.data import load_examples
    from tts.llasa import SpeechVocab

    examples = load_examples(
        cfg.data.path, max_bad_fraction=cfg.data.max_bad_fraction, check_audio=cfg.data.check_audio
    )
    path = model_path or resolve_paths(cfg)[0]
    tokenizer = load_tokenizer(path, cfg)
    vocab = SpeechVocab.from_tokenizer(tokenizer, cfg.model.stop_token)
    pad_id = vocab.pad_id if vocab.pad_id is not None else vocab.stop_id  # any real id: masks remove padding
    prompts = build_prompts(cfg, examples, tokenizer, vocab)
    model = load_model(path, cfg, device)
    # The KL anchor is the initial policy (also when resuming), loaded once more and frozen; none if β = 0.
    ref = load_model(path, cfg, device).eval().requires_grad_(False) if cfg.grpo.beta > 0 else None
    return Components(
        model=model,
        tokenizer=tokenizer,
        vocab=vocab,
        pad_id=pad_id,
        prompts=prompts,
        generator=build_generator(cfg, model, vocab, pad_id, device, model_path=path),
        scorer=build_scorer(cfg, vocab, examples),
        ref_model=ref,
        examples=list(examples),
    )


def describe(cfg: Config, parts: Components, device: torch.device, world_size: int) -> str:
    n = sum(p.numel() for p in parts.model.parameters())
    g = cfg.grpo
    return (
        f"[train] model {cfg.model.path} ({n / 1e6:.1f} M parameters) on {device}, precision {cfg.run.precision}; "
        f"{len(parts.prompts)} prompts; per step {g.prompts_per_step * world_size} prompts × {g.group_size} "
        f"completions ({world_size} process{'es' if world_size > 1 else ''}), micro-batch {g.micro_batch_size}, "
        f"μ={g.num_iterations}, β={g.beta}; run folder {cfg.run.output_dir} (pid {os.getpid()})"
    )
