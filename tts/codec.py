"""Decoder-only X-Codec2: speech codes -> 16 kHz waveform.

A clean re-implementation of the decoding path of the ``xcodec2`` package (``XCodec2Model.decode_code``)::

    codes [B, T] --FSQ index -> 8 levels--> project_out [B, T, vq_dim] --fc_post_a--> [B, T, hidden]
        --Vocos backbone (conv, 2 ResNet blocks, transformer, 2 ResNet blocks, LayerNorm)-->
        --ISTFT head (n_fft = 4·hop, "same" padding)--> waveform [B, T·hop]

It loads only the decoder keys of the official checkpoint (``generator.quantizer.*``, ``generator.backbone.*``,
``generator.head.*``, ``fc_post_a.*``), so decoding needs neither w2v-BERT nor the encoder, nor the package's
pinned torch/torchaudio. ``tests/test_codec.py`` proves it matches the package's output on the same weights.

Two behaviours of the trained model are reproduced on purpose:

* FSQ grid. The checkpoint was trained with vector-quantize-pytorch 1.17.8, whose level values for L = 4 are
  (d - 2)/2 ∈ {-1, -0.5, 0, 0.5}. Newer releases (e.g. 1.32) build ``ResidualFSQ`` with ``preserve_symmetry=True``
  ({-1, -1/3, 1/3, 1}), which silently changes every decoded embedding; so the index decoding is done here.
* Rotary embedding. The package passes q, k shaped [b, heads, t, d] to torchtune's RoPE, which expects
  [b, t, heads, d]: each head is rotated by its *head index*, and time gets no positional signal.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tts.constants import SAMPLES_PER_CODE

DECODER_PREFIXES = ("generator.quantizer.", "generator.backbone.", "generator.head.", "fc_post_a.")
# File names in a checkpoint folder, in order of preference (HKUSTAudio/xcodec2 ships both).
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CONFIG_FILE = "config.json"
CONFIG_KEY = "decoder"  # our own block in config.json; the official config has none, so defaults apply


@dataclass(frozen=True)
class XCodec2Config:
    """Decoder hyper-parameters; the defaults are those of HKUSTAudio/xcodec2 (187 M decoder parameters)."""

    hidden_dim: int = 1024
    depth: int = 12
    heads: int = 16
    pos_meb_dim: int = 64  # rotary dimension; must equal hidden_dim / heads
    hop_length: int = SAMPLES_PER_CODE
    vq_dim: int = 2048
    levels: tuple[int, ...] = (4,) * 8
    rope_base: int = 10_000

    def __post_init__(self) -> None:
        if self.hidden_dim % self.heads or self.hidden_dim // self.heads != self.pos_meb_dim:
            raise ValueError(
                f"[tts] codec config: pos_meb_dim={self.pos_meb_dim} must equal hidden_dim/heads "
                f"= {self.hidden_dim}/{self.heads}"
            )
        if self.hidden_dim % 32:
            raise ValueError(f"[tts] codec config: hidden_dim={self.hidden_dim} must be a multiple of 32 (GroupNorm)")

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["levels"] = list(self.levels)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, object], *, source: str = "config") -> XCodec2Config:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"[tts] {source}: unknown codec decoder keys {unknown}; known: {sorted(known)}")
        kw = dict(d)
        if "levels" in kw:
            kw["levels"] = tuple(int(x) for x in kw["levels"])  # type: ignore[union-attr]
        return cls(**kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------- modules


class FSQIndexDecoder(nn.Module):
    """Finite scalar quantisation, index -> embedding (one quantiser, as X-Codec2 uses it).

    Index n has digits d_i = ⌊n / b_i⌋ mod L_i with b = cumprod([1, L_0, …, L_{k-2}]) (first level least
    significant); each digit maps to z_i = (d_i - ⌊L_i/2⌋) / ⌊L_i/2⌋, and the embedding is project_out(z).
    ``project_in`` (embedding -> z) is only used to encode; it is kept so the checkpoint loads strictly.
    """

    def __init__(self, dim: int, levels: Sequence[int]) -> None:
        super().__init__()
        self.project_in = nn.Linear(dim, len(levels))
        self.project_out = nn.Linear(len(levels), dim)
        lv = torch.tensor(list(levels), dtype=torch.long)
        self.register_buffer("levels", lv, persistent=False)
        self.register_buffer("basis", torch.cumprod(torch.cat([lv.new_ones(1), lv[:-1]]), 0), persistent=False)

    def grid(self, codes: Tensor) -> Tensor:
        """codes [...] long -> z [..., k] float32 on the FSQ grid."""
        digits = (codes.unsqueeze(-1) // self.basis) % self.levels
        half = (self.levels // 2).float()
        return (digits.float() - half) / half

    def forward(self, codes: Tensor) -> Tensor:  # [B, T] -> [B, T, dim]
        z = self.grid(codes).to(self.project_out.weight.dtype)
        return self.project_out(z)


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x²) + eps) · w (the package's own RMSNorm, eps 1e-6)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(torch.mean(x**2, dim=-1, keepdim=True) + self.eps) * self.weight


def head_index_rope(x: Tensor, base: int) -> Tensor:
    """Interleaved-pair RoPE with position = head index (see module docstring). x [b, h, t, d]."""
    h, d = x.shape[1], x.shape[-1]
    theta = 1.0 / (base ** (torch.arange(0, d, 2, device=x.device)[: d // 2].float() / d))
    angle = torch.einsum("i,j->ij", torch.arange(h, device=x.device, dtype=theta.dtype), theta).float()
    cos, sin = angle.cos().view(1, h, 1, d // 2), angle.sin().view(1, h, 1, d // 2)
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    x0, x1 = xs[..., 0], xs[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1)
    return out.flatten(3).type_as(x)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, rope_base: int) -> None:
        super().__init__()
        self.heads, self.rope_base = heads, rope_base
        self.c_attn = nn.Linear(dim, 3 * dim, bias=False)
        self.c_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # [b, t, dim], bidirectional
        b, t, dim = x.shape
        qkv = self.c_attn(x).view(b, t, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)  # [3, b, h, t, d]
        q, k = head_index_rope(qkv[0], self.rope_base), head_index_rope(qkv[1], self.rope_base)
        y = F.scaled_dot_product_attention(q, k, qkv[2])
        return self.c_proj(y.transpose(1, 2).reshape(b, t, dim))


class MLP(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim, bias=False)
        self.fc2 = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.silu(self.fc1(x)))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, rope_base: int) -> None:
        super().__init__()
        self.att_norm = RMSNorm(dim)
        self.ffn_norm = RMSNorm(dim)
        self.att = Attention(dim, heads, rope_base)
        self.mlp = MLP(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.att(self.att_norm(x))
        return x + self.mlp(self.ffn_norm(x))


def _swish(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)  # written out as in the package (F.silu may differ in the last bit)


class ResnetBlock(nn.Module):
    """GroupNorm(32) -> swish -> conv3 -> GroupNorm(32) -> swish -> conv3, plus the input (dropout: eval only)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(32, dim, eps=1e-6)
        self.conv1 = nn.Conv1d(dim, dim, kernel_size=3, padding=1)
        self.norm2 = nn.GroupNorm(32, dim, eps=1e-6)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:  # [b, dim, t]
        h = self.conv1(_swish(self.norm1(x)))
        return x + self.conv2(_swish(self.norm2(h)))


class VocosBackbone(nn.Module):
    def __init__(self, cfg: XCodec2Config) -> None:
        super().__init__()
        dim = cfg.hidden_dim
        self.embed = nn.Conv1d(dim, dim, kernel_size=7, padding=3)
        self.prior_net = nn.Sequential(ResnetBlock(dim), ResnetBlock(dim))
        self.transformers = nn.Sequential(*(TransformerBlock(dim, cfg.heads, cfg.rope_base) for _ in range(cfg.depth)))
        self.final_layer_norm = nn.LayerNorm(dim, eps=1e-6)
        self.post_net = nn.Sequential(ResnetBlock(dim), ResnetBlock(dim))

    def forward(self, x: Tensor) -> Tensor:  # [b, t, dim] -> [b, t, dim]
        x = self.prior_net(self.embed(x.transpose(1, 2)))
        x = self.transformers(x.transpose(1, 2))
        x = self.post_net(x.transpose(1, 2))
        return self.final_layer_norm(x.transpose(1, 2))


class ISTFT(nn.Module):
    """Inverse STFT with "same" padding: overlap-add of windowed frames, divided by the window envelope Σ w².

    For T frames the output has (T-1)·hop + n_fft - 2·pad = T·hop samples, pad = (n_fft - hop)/2.
    """

    def __init__(self, n_fft: int, hop_length: int) -> None:
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.register_buffer("window", torch.hann_window(n_fft))  # persistent: it is in the checkpoint

    def forward(self, spec: Tensor) -> Tensor:  # complex [b, n_fft/2+1, T] -> [b, T·hop]
        n, hop, win = self.n_fft, self.hop_length, self.window
        pad = (n - hop) // 2
        frames = spec.shape[-1]
        ifft = torch.fft.irfft(spec, n, dim=1, norm="backward") * win[None, :, None]
        size = (frames - 1) * hop + n
        y = F.fold(ifft, output_size=(1, size), kernel_size=(1, n), stride=(1, hop))[:, 0, 0, pad:-pad]
        env = win.square().expand(1, frames, -1).transpose(1, 2)
        env = F.fold(env, output_size=(1, size), kernel_size=(1, n), stride=(1, hop)).squeeze()[pad:-pad]
        return y / env


class ISTFTHead(nn.Module):
    """Linear -> (log-magnitude, phase) -> S = min(exp(m), 100)·e^{iφ} -> ISTFT. Computed in float32."""

    def __init__(self, dim: int, hop_length: int) -> None:
        super().__init__()
        n_fft = 4 * hop_length
        self.out = nn.Linear(dim, n_fft + 2)
        self.istft = ISTFT(n_fft, hop_length)

    def forward(self, x: Tensor) -> Tensor:  # [b, t, dim] -> [b, t·hop]
        mag, phase = self.out(x).float().transpose(1, 2).chunk(2, dim=1)
        mag = torch.clip(torch.exp(mag), max=1e2)
        return self.istft(mag * (torch.cos(phase) + 1j * torch.sin(phase)))


class CodecGenerator(nn.Module):
    """The submodules under the checkpoint's ``generator.`` names (not a ``grpo.rollouts.Generator``)."""

    def __init__(self, cfg: XCodec2Config) -> None:
        super().__init__()
        self.quantizer = FSQIndexDecoder(cfg.vq_dim, cfg.levels)
        self.backbone = VocosBackbone(cfg)
        self.head = ISTFTHead(cfg.hidden_dim, cfg.hop_length)


class XCodec2Decoder(nn.Module):
    def __init__(self, config: XCodec2Config | None = None) -> None:
        super().__init__()
        self.config = config or XCodec2Config()
        self.generator = CodecGenerator(self.config)
        self.fc_post_a = nn.Linear(self.config.vq_dim, self.config.hidden_dim)
        self.eval()

    # -- loading -------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> XCodec2Decoder:
        """Load from a checkpoint folder or a Hugging Face id (e.g. ``HKUSTAudio/xcodec2``).

        Only the decoder keys are read (safetensors reads them lazily from the 3.3 GB file); every decoder key
        the module expects must be present with the right shape, and no unknown decoder key may remain.
        """
        weights, config_file = _resolve_checkpoint(str(name_or_path))
        cfg = _read_config(config_file)
        state = _read_decoder_state(weights)
        model = cls(cfg)
        expected = set(model.state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(
                f"[tts] codec.path={str(name_or_path)!r}: decoder keys do not match {weights.name} "
                f"(missing {missing[:8]}{'…' if len(missing) > 8 else ''}, "
                f"unexpected {unexpected[:8]}{'…' if len(unexpected) > 8 else ''}); "
                f"is it an X-Codec2 checkpoint, and does config.json describe its decoder sizes?"
            )
        for k, v in model.state_dict().items():
            if state[k].shape != v.shape:
                raise ValueError(
                    f"[tts] codec.path={str(name_or_path)!r}: {k} has shape {tuple(state[k].shape)} in {weights.name}, "
                    f"the decoder config {cfg} expects {tuple(v.shape)}"
                )
        model.load_state_dict(state, strict=True)
        return model.to(device=device, dtype=dtype).eval()

    def save_pretrained(self, out_dir: str | os.PathLike[str], extra: Mapping[str, Tensor] | None = None) -> Path:
        """Write ``model.safetensors`` (+ any ``extra`` tensors, e.g. non-decoder keys) and ``config.json``."""
        from safetensors.torch import save_file

        from atomicfs import atomic_path, write_text

        out = Path(out_dir)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        tensors.update({k: v.detach().cpu().contiguous() for k, v in (extra or {}).items()})
        with atomic_path(out / WEIGHT_FILES[0]) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        write_text(out / CONFIG_FILE, json.dumps({"model_type": "xcodec", CONFIG_KEY: self.config.to_dict()}, indent=2))
        return out

    # -- decoding ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """codes [B, T] (ints in [0, codebook_size)) -> waveform [B, T·320] float32 at 16 kHz."""
        if codes.ndim != 2:
            raise ValueError(f"[tts] decode expects codes of shape [B, T], got {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.config.codebook_size):
            bad = ((codes < 0) | (codes >= self.config.codebook_size)).nonzero()[0].tolist()
            raise ValueError(
                f"[tts] speech code {int(codes[bad[0], bad[1]])} at [{bad[0]}, {bad[1]}] is outside "
                f"[0, {self.config.codebook_size - 1}]"
            )
        if codes.shape[1] == 0:
            return torch.zeros(codes.shape[0], 0, device=codes.device)
        device = self.fc_post_a.weight.device
        x = self.fc_post_a(self.generator.quantizer(codes.to(device=device, dtype=torch.long)))
        return self.generator.head(self.generator.backbone(x))

    def decode_batch(
        self, codes: Sequence[Sequence[int] | np.ndarray], *, batch_size: int = 16, exact: bool = True
    ) -> list[np.ndarray]:
        """Decode completions of uneven lengths; returns one float32 waveform of 320·len(c) samples each.

        Sequences are sorted by length and decoded up to ``batch_size`` at a time; an empty sequence gives an
        empty waveform. With ``exact=True`` (default) only sequences of equal length share a batch, so each
        waveform equals decoding it alone (to float rounding) and does not depend on the rest of the batch
        (rewards stay reproducible). With ``exact=False`` a batch is padded with code 0 to its longest sequence and each
        waveform cut to its length; this is not invisible — the GroupNorms normalise over all frames and the
        attention is bidirectional — so padded items change (with random weights, by as much as the signal).
        """
        arrays = [np.asarray(c) for c in codes]
        for i, a in enumerate(arrays):
            if a.ndim != 1:
                raise ValueError(f"[tts] decode_batch: codes[{i}] has shape {a.shape}, expected one dimension")
            if a.size and not np.issubdtype(a.dtype, np.integer):
                raise ValueError(f"[tts] decode_batch: codes[{i}] has dtype {a.dtype}, expected integers")
            bad = np.flatnonzero((a < 0) | (a >= self.config.codebook_size))
            if bad.size:
                j = int(bad[0])
                raise ValueError(
                    f"[tts] decode_batch: codes[{i}][{j}]={int(a[j])} is outside [0, {self.config.codebook_size - 1}]"
                )
        out: list[np.ndarray] = [np.zeros(0, dtype=np.float32) for _ in arrays]
        order = sorted((i for i, a in enumerate(arrays) if a.size), key=lambda i: arrays[i].size)
        batches: list[list[int]] = []
        for i in order:
            if (
                batches
                and len(batches[-1]) < batch_size
                and (not exact or arrays[batches[-1][0]].size == arrays[i].size)
            ):
                batches[-1].append(i)
            else:
                batches.append([i])
        device = self.fc_post_a.weight.device
        for batch in batches:
            longest = max(arrays[i].size for i in batch)
            padded = torch.zeros(len(batch), longest, dtype=torch.long)
            for row, i in enumerate(batch):
                padded[row, : arrays[i].size] = torch.from_numpy(arrays[i].astype(np.int64))
            wav = self.decode(padded.to(device)).float().cpu().numpy()
            for row, i in enumerate(batch):
                out[i] = np.ascontiguousarray(wav[row, : arrays[i].size * self.config.hop_length])
        return out


# ---------------------------------------------------------------------------------------------------- files


def _resolve_checkpoint(name_or_path: str) -> tuple[Path, Path | None]:
    """-> (weights file, config.json or None) from a local folder or a Hugging Face id."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                cfg = path / CONFIG_FILE
                return path / name, cfg if cfg.is_file() else None
        raise FileNotFoundError(f"[tts] codec.path={name_or_path!r}: none of {list(WEIGHT_FILES)} in {path}")
    if path.is_file():
        cfg = path.parent / CONFIG_FILE
        return path, cfg if cfg.is_file() else None
    if name_or_path.count("/") != 1 or name_or_path.startswith((".", "/", "~")):
        raise FileNotFoundError(f"[tts] codec.path={name_or_path!r}: no such folder, and not a Hugging Face id")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:  # pragma: no cover - transformers depends on it
        raise ImportError(f"[tts] codec.path={name_or_path!r}: huggingface_hub is needed to download it") from e
    errors = []
    for name in WEIGHT_FILES:
        try:
            weights = Path(hf_hub_download(name_or_path, name))
        except Exception as e:  # offline, missing file, gated repo: all end in the same advice
            errors.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        try:
            cfg: Path | None = Path(hf_hub_download(name_or_path, CONFIG_FILE))
        except Exception:
            cfg = None
        return weights, cfg
    raise FileNotFoundError(
        f"[tts] codec.path={name_or_path!r}: could not download the X-Codec2 checkpoint ({'; '.join(errors)}). "
        "Set codec.path to a local folder holding model.safetensors (or pytorch_model.bin), "
        "or allow access to the Hugging Face hub."
    )


def _read_config(config_file: Path | None) -> XCodec2Config:
    if config_file is None:
        return XCodec2Config()
    try:
        raw = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"[tts] codec config {config_file}: cannot read it ({e})") from e
    block = raw.get(CONFIG_KEY) if isinstance(raw, dict) else None
    return XCodec2Config.from_dict(block, source=str(config_file)) if block else XCodec2Config()


def _read_decoder_state(weights: Path) -> dict[str, Tensor]:
    def keep(k: str) -> bool:
        return k.startswith(DECODER_PREFIXES)

    if weights.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if keep(k)}
    obj = _torch_load(weights)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # a Lightning checkpoint
    if not isinstance(obj, dict):
        raise ValueError(f"[tts] codec checkpoint {weights}: expected a state dict, got {type(obj).__name__}")
    return {k: v for k, v in obj.items() if keep(k)}


def _torch_load(weights: Path) -> object:
    """``torch.load(weights_only=True)``, memory-mapped where the file format allows it.

    Files from before torch's zip format cannot be memory-mapped: those load without mmap. The error blames
    weights_only only when it refused an object; other failures (truncated file, not a checkpoint) say so.
    """
    try:
        try:
            return torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return torch.load(weights, map_location="cpu", weights_only=True)  # a legacy (non-zip) file
    except Exception as e:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if refused:  # a real object, which weights_only refuses to build
            raise ValueError(
                f"[tts] codec checkpoint {weights}: holds an object besides tensors ({refused.group(1)}), which "
                "torch.load(weights_only=True) refuses to build; convert the checkpoint to model.safetensors"
            ) from e
        detail = re.sub(r"\s+", " ", str(e)).strip()[:300]
        raise ValueError(f"[tts] codec checkpoint {weights}: not a readable torch checkpoint ({detail})") from e
