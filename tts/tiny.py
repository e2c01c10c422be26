"""Tiny offline stand-ins with the exact Llasa / X-Codec2 layouts, built in seconds and deterministically.

* ``build_tiny_llasa``: a real ``LlamaForCausalLM`` (SmolLM2-style config, tied embeddings) and a real fast
  tokenizer (byte-level BPE trained on a few German and English sentences + the 8 control tokens + all
  65,536 ``<|s_N|>`` as ordinary added tokens + a ChatML chat template), saved with ``save_pretrained``.
* ``build_tiny_codec``: an ``XCodec2Decoder`` of the real architecture at hidden 128 / depth 2 / heads 4 with
  random weights, saved as the official checkpoint kind (``model.safetensors`` with ``generator.*`` and
  ``fc_post_a.*`` keys, plus a few non-decoder keys that loading must drop).

Both load through the same code as the real models (``AutoModelForCausalLM`` / ``XCodec2Decoder.from_pretrained``).
``python -m tts.tiny --out DIR`` writes ``DIR/model`` and ``DIR/codec``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tts.codec import XCodec2Config, XCodec2Decoder
from tts.constants import NUM_CODES
from tts.io import build_folder, cache_root
from tts.llasa import CONTROL_TOKENS, speech_token

TINY_VERSION = "v1"  # bump when the tiny assets change, so cached copies are rebuilt

SENTENCES = (
    "Convert the text to speech:",
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "How much wood would a woodchuck chuck if a woodchuck could chuck wood?",
    "Please call Stella and ask her to bring these things with her from the store.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich.",
    "Fischers Fritz fischt frische Fische, frische Fische fischt Fischers Fritz.",
    "Guten Morgen! Wie geht es Ihnen heute? Mir geht es gut, danke.",
    "Ich möchte bitte ein Brötchen und eine Tasse Kaffee, 3 Euro 50.",
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# SmolLM2-style ChatML; every message's content appears verbatim, as continue_final_message needs.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TINY_CODEC = XCodec2Config(hidden_dim=128, depth=2, heads=4, pos_meb_dim=32, vq_dim=256)


def build_tokenizer(vocab_size: int = 512, sentences: Sequence[str] = SENTENCES) -> Any:
    """A ``PreTrainedTokenizerFast``: BPE on ``sentences``, then control and speech tokens as ordinary added tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sentences, trainer=trainer)
    added = [*CONTROL_TOKENS, *(speech_token(c) for c in range(NUM_CODES))]
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in added])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )


def build_tiny_llasa(
    out_dir: str | os.PathLike[str], *, seed: int = 0, hidden_size: int = 64, num_layers: int = 2
) -> Path:
    """Save a tiny Llasa (model + tokenizer) to ``out_dir`` and return it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    tokenizer = build_tokenizer()
    heads = max(1, hidden_size // 16)
    config = LlamaConfig(
        vocab_size=len(tokenizer),  # type: ignore[arg-type]
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,  # type: ignore[attr-defined]
        eos_token_id=tokenizer.eos_token_id,  # type: ignore[attr-defined]
        pad_token_id=tokenizer.pad_token_id,  # type: ignore[attr-defined]
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)  # type: ignore[attr-defined]
    return out


def build_tiny_codec(out_dir: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Save a random-weight tiny X-Codec2 checkpoint, including non-decoder keys, to ``out_dir``."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    decoder = XCodec2Decoder(TINY_CODEC)
    with torch.no_grad():  # perturb norms and zero biases too, so a wrongly loaded tensor changes the output
        for p in decoder.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    # Stand-ins for what the full checkpoint also holds (encoder, w2v-BERT, fc_prior): loading must drop them.
    extra = {
        "CodecEnc.conv_blocks.0.weight": torch.randn(8, 1, 7, generator=gen),
        "semantic_model.encoder.layers.0.ffn.weight": torch.randn(4, 4, generator=gen),
        "fc_prior.weight": torch.randn(4, 4, generator=gen),
    }
    return decoder.save_pretrained(out_dir, extra=extra)


def tiny_assets(cache_dir: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
    """Build the tiny model and codec once into a cache folder; returns (model_dir, codec_dir).

    Concurrent callers are safe: each builds into a temporary folder and renames it into place.
    """
    root = (Path(cache_dir) if cache_dir is not None else cache_root() / "tiny") / TINY_VERSION
    model_dir, codec_dir = root / "model", root / "codec"
    for target, build in ((model_dir, build_tiny_llasa), (codec_dir, build_tiny_codec)):
        build_folder(target, build)
    return model_dir, codec_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tts.tiny", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="writes OUT/model and OUT/codec")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_tiny_llasa(args.out / "model", seed=args.seed))
    print(build_tiny_codec(args.out / "codec", seed=args.seed))


if __name__ == "__main__":
    main()
