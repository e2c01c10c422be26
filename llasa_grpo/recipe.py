"""The Llasa GRPO recipe: the components built from the root config (``llasa_grpo.config``), and the preflight.

``train.py`` and ``evaluate.py`` share this module, so both read the same TOML and build the same model,
tokenizer, prompts, generator and scorer:

    cfg = load(path, overrides)          # llasa_grpo.config: checked before anything loads
    check_resources(cfg)                 # model / codec / transcriber / data reachable, else names the key
    parts = build_components(cfg, device)
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from grpo.decode import FastHFGenerator
from grpo.generation import HFGenerator
from grpo.reference import place_reference
from grpo.rollouts import Generator
from grpo.trainer import Prompt, autocast_factory
from llasa_grpo.config import Config
from llasa_grpo.config import load as load  # recipe.load(path, overrides): the one way to read a run's config
from reward.asr.transcript import Transcriber
from reward.config import TranscriberConfig
from tomlconfig import ConfigError
from tts.config import CodecConfig, torch_dtype

# Names that resolve to assets the project builds or assembles offline (no hub needed): the random tiny
# models (tts/tiny.py) and the speaking lab's committed models (lab/assets.py).
TINY_MODEL, TINY_CODEC, OFFLINE_WHISPER = "tiny-llasa", "tiny-xcodec2", "whisper-base-pypi"
LAB_MODEL, LAB_CODEC = "lab-llasa", "lab-xcodec2"
OFFLINE_MODELS, OFFLINE_CODECS = (TINY_MODEL, LAB_MODEL), (TINY_CODEC, LAB_CODEC)


def resolve_asset(name: str) -> str:
    """The local folder of an offline asset name; any other name (folder, hub id) is returned as it is."""
    if name in (TINY_MODEL, TINY_CODEC):
        from tts.tiny import tiny_assets

        return str(tiny_assets()[0 if name == TINY_MODEL else 1])
    if name in (LAB_MODEL, LAB_CODEC):
        from lab.assets import asset_path

        return str(asset_path(name))
    return name


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
    from reward.asr.http import HTTPTranscriber, TranscriberUnavailable

    try:
        HTTPTranscriber(transcriber).health()
    except TranscriberUnavailable as e:
        return str(e).removeprefix("[transcriber] ").replace("url=", "transcriber.url=", 1)
    return None


def check_resources(cfg: Config, source: str = "config") -> None:
    """Fail fast, before any model loads, with every missing resource named by its config key."""
    problems = []
    if cfg.model.path not in OFFLINE_MODELS:
        problems.append(_hub_problem("model.path", cfg.model.path, "config.json"))
    if cfg.codec.path not in OFFLINE_CODECS:
        problems.append(_hub_problem("codec.path", cfg.codec.path, "model.safetensors"))
    if cfg.transcriber.backend == "whisper" and cfg.transcriber.model != OFFLINE_WHISPER:
        name = cfg.transcriber.model
        repo = name if "/" in name else f"Systran/faster-whisper-{name}"  # faster-whisper's size names
        problems.append(_hub_problem("transcriber.model", name, "model.bin", repo))
    if cfg.transcriber.backend == "http":
        problems.append(_service_problem(cfg.transcriber))
    if not Path(cfg.data.path).expanduser().is_file():
        problems.append(f"data.path={cfg.data.path!r}: no such file (rows of text, language, ref_audio, ref_text)")
    from grpo.tracking import missing_sinks

    problems += missing_sinks(cfg.run.report_to)
    if cfg.run.push_to_hub:
        from huggingface_hub import get_token

        if not get_token():
            problems.append(
                f"run.push_to_hub={cfg.run.push_to_hub!r}: no Hugging Face token: run `huggingface-cli login` or set "
                "HF_TOKEN (a write token), or set run.push_to_hub = ''"
            )
    problems = [p for p in problems if p]
    if problems:
        raise ConfigError(f"{source}: cannot start:\n  " + "\n  ".join(problems))


# --------------------------------------------------------------------------------------------------------------
# Components


@dataclass
class Components:
    model: nn.Module  # the policy, on its device, float32 master weights unless model.dtype says otherwise
    tokenizer: Any
    pad_id: int
    prompts: list[Prompt]
    generator: Generator
    scorer: Any  # reward.scorer.SpeechScorer (Scorer + SampleWriter)
    ref_model: nn.Module | None


def resolve_paths(cfg: Config) -> tuple[str, str]:
    """(model path, codec path) with the offline asset names resolved (built or unpacked on first use)."""
    return resolve_asset(cfg.model.path), resolve_asset(cfg.codec.path)


def load_model(path: str, cfg: Config, device: torch.device) -> nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(cfg.model.dtype))
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
    known = whisper_languages()
    if known and language not in known:
        where = f"line {ex.line}: language" if ex.language else "transcriber.language ="
        raise ConfigError(
            f"data.path={cfg.data.path!r} {where} {language!r}: not a language the Whisper transcriber knows "
            f"(e.g. {', '.join(sorted(known)[:8])}, ...)"
        )
    return language


def whisper_languages() -> frozenset[str]:
    """The language codes every transcriber backend (Whisper, in process or as reward.service) accepts; empty
    when faster-whisper is not installed here (a remote service then checks)."""
    try:
        from faster_whisper.tokenizer import _LANGUAGE_CODES
    except ImportError:
        return frozenset()
    return frozenset(_LANGUAGE_CODES)


def build_prompts(
    cfg: Config, examples: Sequence[Any], tokenizer: Any, vocab: Any, max_positions: int | None = None
) -> list[Prompt]:
    """Token ids per data row (reference codes appended when cloning) and the row as meta for the scorer.

    With ``max_positions`` (the model's ``max_position_embeddings``), a row whose prompt and
    ``generation.max_new_tokens`` do not fit is refused, naming its line, length and the limit.

    ``text`` and ``ref_text`` go through the same [data] normaliser (its character set comes from both), and
    meta carries what the prompt was built from: the normalised texts, the resolved ``language`` and, when
    cloning, the reference ``ref_codes`` (the hook decodes them in front of the completion).
    """
    from tts.llasa import build_prompt_ids

    fmt = cfg.model.prompt_format()
    normalizer = cfg.data.normalizer([t for e in examples for t in (e.text, e.ref_text) if t])

    def normalize(text: str | None) -> str | None:
        return normalizer.normalize(text)[0] if normalizer and text is not None else text

    refs = reference_codes(cfg)
    prompts = []
    for ex in examples:
        text, ref_text, language = normalize(ex.text), normalize(ex.ref_text), example_language(cfg, ex)
        codes = refs.get(ex.ref_audio) if ex.ref_audio else None
        try:
            ids = build_prompt_ids(tokenizer, fmt, text, ref_text=ref_text, ref_codes=codes, vocab=vocab)
        except ValueError as e:
            raise ConfigError(f"data.path={cfg.data.path!r} line {ex.line}: {e}") from None
        if max_positions is not None and len(ids) + cfg.generation.max_new_tokens > max_positions:
            raise ConfigError(
                f"data.path={cfg.data.path!r} line {ex.line}: prompt too long for the model: {len(ids)} prompt "
                f"tokens + generation.max_new_tokens={cfg.generation.max_new_tokens} > max_position_embeddings="
                f"{max_positions} (text of {len(ex.text)} characters): shorten or split the text"
            )
        meta = {**ex.meta(), "text": text, "ref_text": ref_text, "language": language, "ref_codes": codes}
        prompts.append(Prompt(ids=tuple(ids), meta=meta))
    return prompts


def reference_codes(cfg: Config) -> Any:
    """The cloning-reference cache; the lab codec encodes misses itself (its encoder is small and local)."""
    from tts.reference import ReferenceCodes

    if cfg.reference.codec != LAB_CODEC:
        return ReferenceCodes(cfg.reference.codec, cfg.reference.cache_dir or None)
    from lab.codec import file_encoder

    folder = resolve_asset(LAB_CODEC)  # its name holds a content hash: a rebuilt codec gets fresh codes
    return ReferenceCodes(Path(folder).name, cfg.reference.cache_dir or None, encoder=file_encoder(folder))


def padding_id(vocab: Any) -> int:
    """The id that fills padding: the tokenizer's pad token, else the stop token (any real id works: the masks
    remove padding)."""
    return vocab.pad_id if vocab.pad_id is not None else vocab.stop_id


def build_transcriber(cfg: TranscriberConfig) -> Transcriber:
    """The ``[transcriber] backend``: faster-whisper in this process, or the HTTP client of ``reward.service``."""
    if cfg.backend == "http":
        from reward.asr.http import HTTPTranscriber

        return HTTPTranscriber(cfg)
    from reward.asr.whisper import WhisperTranscriber

    return WhisperTranscriber(cfg)


def build_scorer(cfg: Config, vocab: Any, examples: Sequence[Any]) -> Any:
    """Decoder + transcriber + reward terms (``reward.scorer.SpeechScorer``)."""
    from reward.audio_features import speech_activity
    from reward.hook import SpeechHook
    from reward.rate import reference_pause_limits, reference_rate_band
    from reward.scorer import SpeechScorer
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
        path: speech_activity(
            load_audio(path), cfg.reward.pause_below_peak_db, cfg.reward.pause_min_s, cfg.reward.floor_dbfs
        )
        for path in first
    }
    references = [(ex.ref_text, example_language(cfg, ex), activity[path].speech_s) for path, ex in first.items()]
    band, _ = reference_rate_band(references, cfg.reward)
    pauses, _ = reference_pause_limits(list(activity.values()), cfg.reward)
    _, codec_path = resolve_paths(cfg)
    decoder = XCodec2Decoder.from_pretrained(codec_path, device=cfg.codec.device, dtype=torch_dtype(cfg.codec.dtype))
    transcriber = build_transcriber(cfg.transcriber)
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
        if gen.hf_decoder == "generate":
            return HFGenerator(model, gen, pad_id=pad_id, stop_ids=[vocab.stop_id], autocast=autocast)
        dtype = None if gen.hf_sampler_weights == "policy" else getattr(torch, gen.hf_sampler_weights)
        return FastHFGenerator(
            model, gen, pad_id=pad_id, stop_ids=[vocab.stop_id], autocast=autocast, sampler_dtype=dtype
        )
    from grpo.engine import VLLMEngine, VLLMSettings
    from grpo.engine_generation import EngineGenerator, ServerGenerator
    from grpo.generation import Sampling

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


def model_max_positions(path: str) -> int | None:
    """The model's ``max_position_embeddings`` from its config.json (None where it names none)."""
    from transformers import AutoConfig

    try:
        return getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", None)
    except (OSError, ValueError):
        return None


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
    pad_id = padding_id(vocab)
    prompts = build_prompts(cfg, examples, tokenizer, vocab, max_positions=model_max_positions(path))
    model = load_model(path, cfg, device)
    # The KL anchor is the initial policy (also when resuming), loaded once more and frozen; none if β = 0.
    ref = place_reference(load_model(path, cfg, device), cfg.grpo, device) if cfg.grpo.beta > 0 else None
    return Components(
        model=model,
        tokenizer=tokenizer,
        pad_id=pad_id,
        prompts=prompts,
        generator=build_generator(cfg, model, vocab, pad_id, device, model_path=path),
        scorer=build_scorer(cfg, vocab, examples),
        ref_model=ref,
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
