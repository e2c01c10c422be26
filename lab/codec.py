"""The lab's tiny X-Codec2: a log-mel conv encoder, FSQ [4]*8, and the project's own ``XCodec2Decoder``.

::

    wav --log-mel (hop 320: 50 frames/s)--> conv encoder --> [T, vq_dim] --project_in--> [T, 8]
        --FSQ: d = round(1.999·tanh(x) + 1.5) ∈ {0..3} (straight-through)--> code = Σ_i d_i·4^i
        --> XCodec2Decoder (project_out, fc_post_a, Vocos backbone, ISTFT head) --> wav

The grid z = (d - 2)/2 ∈ {-1, -0.5, 0, 0.5} is exactly the one ``tts.codec.FSQIndexDecoder`` decodes, so a
code written by this encoder means the same thing to the decoder that the trained checkpoint uses. Training is
plain regression, no GAN: multi-resolution log-mel L1 (Whisper's 80 bins at n_fft 400 / hop 160 among them)
plus multi-resolution STFT magnitude (spectral convergence + log magnitude).

The checkpoint is the real X-Codec2 layout (``generator.quantizer.*``, ``generator.backbone.*``,
``generator.head.*``, ``fc_post_a.*``, loaded by ``XCodec2Decoder.from_pretrained`` unchanged) plus the encoder
under ``lab_encoder.*`` and its sizes under ``config.json["lab_encoder"]`` (``LabEncoder.from_pretrained``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grpo.trainer import lr_lambda
from tts.codec import CONFIG_FILE, WEIGHT_FILES, XCodec2Config, XCodec2Decoder
from tts.constants import SAMPLE_RATE, SAMPLES_PER_CODE

ENCODER_PREFIX = "lab_encoder."
ENCODER_CONFIG_KEY = "lab_encoder"
LAB_DECODER = XCodec2Config(hidden_dim=192, depth=3, heads=6, pos_meb_dim=32, vq_dim=256)


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int = SAMPLE_RATE) -> Tensor:
    """Triangular mel filters (HTK mel scale, Slaney area normalisation): [n_mels, n_fft/2 + 1]."""

    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = 700.0 * (10 ** (np.linspace(0, hz_to_mel(np.array(sample_rate / 2.0)), n_mels + 2) / 2595.0) - 1.0)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lower) / (centre - lower)
    down = (upper - freqs[None]) / (upper - centre)
    fb = np.maximum(0.0, np.minimum(up, down)) * (2.0 / (upper - lower))
    return torch.from_numpy(fb.astype(np.float32))


class LogMel(nn.Module):
    def __init__(self, n_fft: int, hop: int, n_mels: int) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("fb", mel_filterbank(n_fft, n_mels), persistent=False)

    def magnitude(self, wav: Tensor) -> Tensor:  # [B, n] -> [B, F, frames]
        spec = torch.stft(wav, self.n_fft, self.hop, window=self.window, center=True, return_complex=True)
        return spec.abs()

    def forward(self, wav: Tensor) -> Tensor:  # [B, n] -> [B, n_mels, frames]
        return torch.log(torch.clamp(self.fb @ self.magnitude(wav), min=1e-5))


@dataclass(frozen=True)
class EncoderConfig:
    channels: int = 256
    blocks: int = 4
    n_mels: int = 80
    n_fft: int = 1024
    kernel: int = 5


class ConvBlock(nn.Module):
    def __init__(self, channels: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(1, channels)
        self.conv = nn.Conv1d(channels, channels, kernel, padding=dilation * (kernel // 2), dilation=dilation)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(F.gelu(self.norm(x)))


class LabEncoder(nn.Module):
    """wav [B, n] -> pre-quantisation features [B, T, 8] with T = n // 320 (``project_in`` included)."""

    def __init__(self, cfg: EncoderConfig, vq_dim: int, num_levels: int) -> None:
        super().__init__()
        self.config = cfg
        self.mel = LogMel(cfg.n_fft, SAMPLES_PER_CODE, cfg.n_mels)
        self.conv_in = nn.Conv1d(cfg.n_mels, cfg.channels, 7, padding=3)
        self.blocks = nn.Sequential(*(ConvBlock(cfg.channels, cfg.kernel, 2 ** (i % 3)) for i in range(cfg.blocks)))
        self.conv_out = nn.Conv1d(cfg.channels, vq_dim, 3, padding=1)
        # The decoder checkpoint's own ``generator.quantizer.project_in`` (vq_dim -> 8), shared with it on save.
        self.project_in = nn.Linear(vq_dim, num_levels)

    def forward(self, wav: Tensor) -> Tensor:
        frames = wav.shape[-1] // SAMPLES_PER_CODE
        x = self.mel(wav)[..., :frames]
        x = self.conv_out(self.blocks(self.conv_in(x)))
        return self.project_in(x.transpose(1, 2))

    @torch.no_grad()
    def encode(self, wav: Tensor) -> Tensor:
        """wav [B, n] -> codes [B, n // 320] (int64)."""
        digits = fsq_digits(self(wav))
        return (digits.long() * (4 ** torch.arange(digits.shape[-1], device=digits.device))).sum(-1)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> LabEncoder:
        """Load the encoder of a lab codec folder (``config.json`` must have a ``lab_encoder`` block)."""
        from safetensors import safe_open

        folder = Path(path)
        cfg_file = folder / CONFIG_FILE
        raw = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        if ENCODER_CONFIG_KEY not in raw:
            raise ValueError(f"[lab] {folder}: not a lab codec ({cfg_file} has no {ENCODER_CONFIG_KEY!r} block)")
        dec = XCodec2Config.from_dict(raw["decoder"], source=str(cfg_file))
        enc = cls(EncoderConfig(**raw[ENCODER_CONFIG_KEY]), dec.vq_dim, len(dec.levels))
        state = {}
        with safe_open(str(folder / WEIGHT_FILES[0]), framework="pt") as f:
            for k in f.keys():
                if k.startswith(ENCODER_PREFIX):
                    state[k[len(ENCODER_PREFIX) :]] = f.get_tensor(k)
                elif k.startswith("generator.quantizer.project_in."):
                    state["project_in." + k.rsplit(".", 1)[1]] = f.get_tensor(k)
        enc.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        return enc.eval()


def fsq_digits(x: Tensor) -> Tensor:
    """Bounded rounding to 4 levels with a straight-through gradient: digits in {0, 1, 2, 3} (float)."""
    u = 1.999 * torch.tanh(x) + 1.5
    return u + (torch.round(u) - u).detach()


def decode_digits(decoder: XCodec2Decoder, digits: Tensor) -> Tensor:
    """The decoder's forward from (straight-through) digits instead of integer codes, for training."""
    z = (digits - 2.0) / 2.0
    x = decoder.fc_post_a(decoder.generator.quantizer.project_out(z))
    return decoder.generator.head(decoder.generator.backbone(x))


class ReconstructionLoss(nn.Module):
    """Multi-resolution log-mel L1 + STFT spectral convergence + log-magnitude L1."""

    MELS = ((400, 160, 80), (1024, 256, 80), (2048, 512, 128))
    STFTS = ((512, 128), (1024, 256), (2048, 512))

    def __init__(self) -> None:
        super().__init__()
        self.mels = nn.ModuleList(LogMel(n, h, m) for n, h, m in self.MELS)
        self.stfts = nn.ModuleList(LogMel(n, h, 8) for n, h in self.STFTS)  # only .magnitude is used

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        loss = sum(F.l1_loss(m(pred), m(target)) for m in self.mels) / len(self.mels)
        for s in self.stfts:
            p, t = s.magnitude(pred), s.magnitude(target)
            sc = torch.linalg.norm(t - p) / torch.linalg.norm(t).clamp_min(1e-7)
            loss = loss + (sc + F.l1_loss(torch.log(p.clamp_min(1e-5)), torch.log(t.clamp_min(1e-5)))) / len(self.stfts)
        return loss


@dataclass(frozen=True)
class CodecTrainConfig:
    steps: int = 2400
    batch: int = 16
    crop_frames: int = 64  # 1.28 s per crop
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 100
    seed: int = 0
    threads: int = 2


def random_crops(wavs: Sequence[np.ndarray], batch: int, samples: int, rng: np.random.Generator) -> Tensor:
    out = np.zeros((batch, samples), dtype=np.float32)
    for row in range(batch):
        w = wavs[int(rng.integers(len(wavs)))]
        if w.size <= samples:
            out[row, : w.size] = w
        else:
            start = int(rng.integers(0, (w.size - samples) // SAMPLES_PER_CODE + 1)) * SAMPLES_PER_CODE
            out[row] = w[start : start + samples]
    return torch.from_numpy(out)


def train_codec(
    wavs: Sequence[np.ndarray],
    cfg: CodecTrainConfig,
    *,
    decoder_config: XCodec2Config = LAB_DECODER,
    encoder_config: EncoderConfig = EncoderConfig(),
    init: tuple[LabEncoder, XCodec2Decoder] | None = None,
    log_every: int = 50,
    bar_position: int = 0,
) -> tuple[LabEncoder, XCodec2Decoder, list[dict[str, float]]]:
    """Train encoder + decoder jointly on random crops of ``wavs``; returns them and the loss log.

    With ``init`` (a trained pair) only the decoder trains: the encoder, and so every code already written
    with it, stays fixed, so the decoder can keep improving while the LM trains on those codes.
    """
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    if init is None:
        decoder = XCodec2Decoder(decoder_config).train()
        encoder = LabEncoder(encoder_config, decoder_config.vq_dim, len(decoder_config.levels)).train()
        params = [*encoder.parameters(), *decoder.parameters()]
    else:
        encoder, decoder = init[0].eval().requires_grad_(False), init[1].float().train()
        params = list(decoder.parameters())
    loss_fn = ReconstructionLoss()
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.8, 0.99), weight_decay=0.0)

    schedule = lr_lambda(cfg.steps, cfg.warmup, "cosine", cfg.min_lr / cfg.lr)  # the trainer's warm-up + cosine

    log: list[dict[str, float]] = []
    t0, running = time.time(), 0.0
    bar = tqdm(
        range(cfg.steps), desc="[lab] codec" if init is None else "[lab] decoder", unit="step", position=bar_position
    )
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cfg.lr * schedule(step)
        target = random_crops(wavs, cfg.batch, cfg.crop_frames * SAMPLES_PER_CODE, rng)
        pred = decode_digits(decoder, fsq_digits(encoder(target)))
        loss = loss_fn(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        running += float(loss.detach())
        if (step + 1) % log_every == 0:
            log.append({"step": step + 1, "loss": running / log_every, "seconds": time.time() - t0})
            bar.set_postfix(loss=f"{running / log_every:.3f}")
            running = 0.0
    return encoder.eval(), decoder.eval(), log


def save_codec(out_dir: Path, encoder: LabEncoder, decoder: XCodec2Decoder, *, fp16: bool = True) -> Path:
    """Write the real X-Codec2 layout plus ``lab_encoder.*``; fp16 halves the size (decoding upcasts)."""
    from atomicfs import write_text

    decoder.generator.quantizer.project_in.load_state_dict(encoder.project_in.state_dict())
    extra = {ENCODER_PREFIX + k: v for k, v in encoder.state_dict().items() if not k.startswith("project_in.")}
    src = decoder.half() if fp16 else decoder
    extra = {k: v.half() if fp16 and v.is_floating_point() else v for k, v in extra.items()}
    src.save_pretrained(out_dir, extra=extra)
    decoder.float()
    cfg = json.loads((out_dir / CONFIG_FILE).read_text())
    cfg[ENCODER_CONFIG_KEY] = asdict(encoder.config)
    write_text(out_dir / CONFIG_FILE, json.dumps(cfg, indent=2))
    return out_dir


def file_encoder(codec_dir: str | os.PathLike[str]) -> Callable[[Path], np.ndarray]:
    """An audio file -> codes function for ``tts.reference.ReferenceCodes`` (voice-cloning references)."""
    from tts.audio import load_audio

    encoder = LabEncoder.from_pretrained(codec_dir)

    def encode(path: Path) -> np.ndarray:
        wav = torch.from_numpy(load_audio(path, SAMPLE_RATE))[None]
        return encoder.encode(wav)[0].numpy().astype(np.int64)

    return encode
