"""Configuration of the TTS side (TOML sections ``[model]``, ``[codec]``, ``[data]``, ``[reference]``).

Plain frozen dataclasses with defaults; the project's one TOML loader fills them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from tts.llasa import PromptFormat, TextNormalizer

if TYPE_CHECKING:
    import torch

DType = Literal["float32", "bfloat16", "float16"]


def torch_dtype(name: DType) -> torch.dtype:
    import torch  # here, so that reading a config (train.py --help) needs no torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


@dataclass(frozen=True)
class ModelConfig:
    path: str = "HKUSTAudio/Llasa-1B"  # folder or Hugging Face id of the Llasa-style causal LM
    dtype: DType = "bfloat16"
    user_template: str = PromptFormat.user_template
    assistant_prefix: str = PromptFormat.assistant_prefix
    stop_token: str = PromptFormat.stop_token
    plain_template: str | None = None  # for tokenizers without a chat template, e.g. "{bos}{user}"

    def __post_init__(self) -> None:
        self.prompt_format()  # validates the templates

    def prompt_format(self) -> PromptFormat:
        return PromptFormat(self.user_template, self.assistant_prefix, self.stop_token, self.plain_template)


@dataclass(frozen=True)
class CodecConfig:
    path: str = "HKUSTAudio/xcodec2"  # folder with model.safetensors / pytorch_model.bin, or a Hugging Face id
    device: str = "cpu"
    dtype: DType = "float32"
    batch_size: int = 16
    exact_batches: bool = True  # decode only equal lengths together: waveforms independent of the batch
    # Voice cloning: decode the reference codes and the completion together, then cut the reference's samples
    # off, as the public Llasa inference does (the decoder's GroupNorm and attention see the whole sequence).
    decode_with_reference: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"[tts] codec.batch_size={self.batch_size}: must be at least 1")


@dataclass(frozen=True)
class DataConfig:
    path: str = ""  # .jsonl or .csv
    max_bad_fraction: float = 0.0
    check_audio: bool = True
    normalize_text: bool = True
    # Characters prompts may contain: "" = derive from the training texts, "*" = any (mapping only), else the set.
    allowed_chars: str = ""
    min_char_count: int = 1  # with derived charsets: characters seen fewer times are dropped

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"[tts] data.max_bad_fraction={self.max_bad_fraction}: must be within [0, 1]")

    def normalizer(self, training_texts: list[str]) -> TextNormalizer | None:
        if not self.normalize_text:
            return None
        if self.allowed_chars == "*":
            return TextNormalizer()
        if self.allowed_chars:
            return TextNormalizer(frozenset(self.allowed_chars) | {" "})
        return TextNormalizer.from_texts(training_texts, min_count=self.min_char_count)


@dataclass(frozen=True)
class ReferenceConfig:
    """Voice-cloning reference encoding (needs the full X-Codec2 model: ``pip install xcodec2 --no-deps``)."""

    codec: str = "HKUSTAudio/xcodec2"
    cache_dir: str = ""  # "" = $LLASA_GRPO_CACHE/reference-codes
    device: str = "cpu"
