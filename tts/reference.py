"""Voice-cloning references: encode reference audio to X-Codec2 codes once, cache them by file content.

Encoding needs the full X-Codec2 model (w2v-BERT 2.0 + the codec encoder), which only the ``xcodec2``
package provides; decoding does not (``tts.codec``). So training reads codes from the cache, and a machine
that has the model fills it beforehand::

    python -m tts.reference encode --data data/train.jsonl --codec HKUSTAudio/xcodec2 [--cache DIR]

Cache layout: ``DIR/<codec key>/<sha256 of the audio file>.npy`` (int64 codes), written atomically.

The package's FSQ must be vector-quantize-pytorch 1.17.8's: newer releases quantise to a different grid and
would produce codes the Llasa model never saw; ``XCodec2Encoder`` checks this before encoding.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from atomicfs import atomic_path
from tts.constants import NUM_CODES, SAMPLE_RATE
from tts.io import cache_root

EncodeFn = Callable[[Path], np.ndarray]  # audio file -> int codes [T]


def default_cache_dir() -> Path:
    return cache_root() / "reference-codes"


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ReferenceCodes:
    """Codes of reference audio files, from the disk cache or (if given) an encoder that fills it.

    The key is the file's content hash, so a renamed file hits the cache and an edited one does not; codes of
    different codecs live in different sub-folders (``codec`` names the encoder, e.g. ``HKUSTAudio/xcodec2``).
    """

    def __init__(
        self,
        codec: str = "HKUSTAudio/xcodec2",
        cache_dir: str | os.PathLike[str] | None = None,
        encoder: EncodeFn | None = None,
    ) -> None:
        self.codec = codec
        self.dir = (Path(cache_dir) if cache_dir else default_cache_dir()) / re.sub(r"[^A-Za-z0-9._-]+", "--", codec)
        self.encoder = encoder
        self._memory: dict[str, np.ndarray] = {}
        self._hashes: dict[tuple[str, int, int, int], str] = {}  # (path, inode, mtime_ns, size) -> sha256

    def path_for(self, audio: str | os.PathLike[str]) -> Path:
        return self.dir / f"{self.content_hash(audio)}.npy"

    def content_hash(self, audio: str | os.PathLike[str]) -> str:
        """sha256 of the file, hashed again only when it changed (inode, modification time or size)."""
        st = os.stat(audio)
        key = (os.path.abspath(audio), st.st_ino, st.st_mtime_ns, st.st_size)
        if key not in self._hashes:
            self._hashes[key] = file_sha256(audio)
        return self._hashes[key]

    def has(self, audio: str | os.PathLike[str]) -> bool:
        return self.path_for(audio).is_file()

    def get(self, audio: str | os.PathLike[str]) -> np.ndarray:
        """int64 codes [T] of ``audio``; encodes and stores them on a cache miss if an encoder is set."""
        target = self.path_for(audio)  # by content: an edited file must not hit a stale entry
        if target.name in self._memory:
            return self._memory[target.name]
        if target.is_file():
            try:
                codes = self._check(np.load(target, allow_pickle=False), f"{audio} (cache file {target})")
            except ValueError as e:
                raise ValueError(f"{e}; delete {target} and encode the reference again") from None
        elif self.encoder is None:
            raise FileNotFoundError(
                f"[tts] no cached codes for reference {audio} (codec {self.codec!r}, cache {self.dir}). Encode the "
                f"dataset's references first on a machine with the X-Codec2 model: "
                f"python -m tts.reference encode --data DATA --codec {self.codec} --cache {self.dir.parent}"
            )
        else:
            codes = self._check(np.asarray(self.encoder(Path(audio))), audio)
            self._store(target, codes)
        self._memory[target.name] = codes
        return codes

    @staticmethod
    def _check(codes: np.ndarray, audio: object) -> np.ndarray:
        """Codes from the encoder or the cache: one or more integers in [0, NUM_CODES)."""
        codes = codes.reshape(-1)
        if codes.size == 0:
            raise ValueError(f"[tts] reference {audio}: no codes (is the audio empty?)")
        if not np.issubdtype(codes.dtype, np.integer) or codes.min() < 0 or codes.max() >= NUM_CODES:
            raise ValueError(f"[tts] reference {audio}: codes of dtype {codes.dtype} outside [0, {NUM_CODES - 1}]")
        return codes.astype(np.int64)

    @staticmethod
    def _store(target: Path, codes: np.ndarray) -> None:
        with atomic_path(target) as tmp:
            np.save(tmp, codes, allow_pickle=False)


class XCodec2Encoder:
    """Reference encoder through the ``xcodec2`` package (optional: ``pip install --no-deps xcodec2==0.1.5``).

    Downloads/loads the full model including w2v-BERT 2.0 (about 3.3 GB); call it only where cloning data is
    used and the cache misses.
    """

    def __init__(self, codec: str = "HKUSTAudio/xcodec2", device: str = "cpu") -> None:
        XCodec2Model = _import_xcodec2()
        import torch

        self.torch = torch
        self.device = device
        self.model = XCodec2Model.from_pretrained(codec).eval().to(device)
        check_fsq_grid(self.model.generator.quantizer)

    def __call__(self, audio: Path) -> np.ndarray:
        from tts.audio import load_audio

        wav = self.torch.from_numpy(load_audio(audio, SAMPLE_RATE))[None]  # [1, n]
        with self.torch.no_grad():
            codes = self.model.encode_code(wav.to(self.device))  # [1, 1, T]
        return codes.reshape(-1).cpu().numpy().astype(np.int64)


def check_fsq_grid(quantizer: object) -> None:
    """Raise unless the package's FSQ uses the grid X-Codec2 was trained with ((d - 2)/2 for 4 levels)."""
    values = sorted(float(v) for v in quantizer.codebooks.unique())  # type: ignore[attr-defined]
    if values != [-1.0, -0.5, 0.0, 0.5]:
        raise RuntimeError(
            f"[tts] the installed vector-quantize-pytorch quantises to {values}, not the grid X-Codec2 was trained "
            "with ([-1, -0.5, 0, 0.5]); encode references in an environment with vector-quantize-pytorch==1.17.8"
        )


def _import_xcodec2() -> type:
    """Import ``XCodec2Model``; a missing torchaudio (imported but unused by xcodec2 0.1.5) is stubbed."""
    try:
        import torchaudio  # noqa: F401
    except ImportError:
        import types

        import transformers.utils  # decide torchaudio availability before the stub exists

        transformers.utils.is_torchaudio_available()
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    try:
        from xcodec2.modeling_xcodec2 import XCodec2Model
    except ImportError as e:
        raise ImportError(
            f"[tts] encoding reference audio needs the xcodec2 package ({e}): "
            "pip install --no-deps xcodec2==0.1.5 torchtune==0.6.1 torchao==0.16.0 vector-quantize-pytorch==1.17.8 "
            "(keep the installed torch: pass -c constraints.txt)"
        ) from e
    return XCodec2Model


def encode_references(audios: Iterable[str], cache: ReferenceCodes) -> tuple[int, int]:
    """Fill the cache for ``audios``; returns (encoded now, already cached)."""
    new = cached = 0
    for audio in dict.fromkeys(audios):  # unique, in order
        if cache.has(audio):
            cached += 1
            continue
        codes = cache.get(audio)
        new += 1
        print(f"[tts] encoded {audio}: {codes.size} codes", file=sys.stderr)
    return new, cached


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tts.reference", description="Pre-encode reference audio.")
    sub = parser.add_subparsers(dest="command", required=True)
    enc = sub.add_parser("encode", help="encode every ref_audio of a dataset into the cache")
    enc.add_argument("--data", required=True, help="a .jsonl or .csv dataset")
    enc.add_argument("--codec", default="HKUSTAudio/xcodec2", help="X-Codec2 folder or Hugging Face id")
    enc.add_argument("--cache", default=None, help="cache folder (default $LLASA_GRPO_CACHE/reference-codes)")
    enc.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from tts.data import load_examples

    audios = [ex.ref_audio for ex in load_examples(args.data) if ex.ref_audio]
    cache = ReferenceCodes(args.codec, args.cache)
    missing = [a for a in dict.fromkeys(audios) if not cache.has(a)]
    if missing:
        cache.encoder = XCodec2Encoder(args.codec, args.device)
    new, cached = encode_references(audios, cache)
    print(f"[tts] {new} references encoded, {cached} already cached, in {cache.dir}")


if __name__ == "__main__":
    main()
