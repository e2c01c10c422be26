"""The committed lab models as named offline assets: ``lab-llasa`` and ``lab-xcodec2``.

The repository holds them under ``lab/assets/`` (fp16 safetensors, configs, and the tokenizer as
``tokenizer.json.gz``: 12 MB of added-token text compresses to ~1 MB). On first use they are materialised
into ``$LLASA_GRPO_CACHE/lab/<content hash>/`` as ordinary model folders, so ``AutoModelForCausalLM`` /
``AutoTokenizer`` / ``XCodec2Decoder.from_pretrained`` load them exactly like SmolKartoffel and X-Codec2.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

from tts.io import build_folder, cache_root

LAB_MODEL, LAB_CODEC = "lab-llasa", "lab-xcodec2"
ASSETS = Path(__file__).resolve().parent / "assets"
SOURCES = {LAB_MODEL: ASSETS / "llasa", LAB_CODEC: ASSETS / "codec"}


def pack(folder: Path, target: Path) -> Path:
    """Copy a built model folder into ``target`` in the committed form (the tokenizer gzipped)."""
    target.mkdir(parents=True, exist_ok=True)
    for f in sorted(folder.iterdir()):
        if f.name == "tokenizer.json":
            with open(f, "rb") as src, gzip.GzipFile(target / "tokenizer.json.gz", "wb", mtime=0) as dst:
                shutil.copyfileobj(src, dst)
        elif f.is_file() and f.suffix != ".done":  # build markers stay in the build folder
            shutil.copy2(f, target / f.name)
    return target


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        h.update(f.name.encode())
        h.update(str(f.stat().st_size).encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 16))  # names, sizes and heads: cheap, and changes with any rebuild
    return h.hexdigest()[:16]


def asset_path(name: str, cache_dir: Path | None = None) -> Path:
    """The materialised folder of ``lab-llasa`` / ``lab-xcodec2`` (built into the cache on first use)."""
    if name not in SOURCES:
        raise KeyError(f"[lab] unknown asset {name!r}; known: {sorted(SOURCES)}")
    src = SOURCES[name]
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"[lab] {src}: the committed {name} files are missing (python -m lab build, then pack)")

    def unpack(tmp: Path) -> None:
        for f in src.iterdir():
            if f.name.endswith(".gz"):
                with gzip.open(f, "rb") as fin, open(tmp / f.name[:-3], "wb") as fout:
                    shutil.copyfileobj(fin, fout)
            else:
                shutil.copy2(f, tmp / f.name)  # a copy: the cache must outlive this checkout

    return build_folder((cache_dir or cache_root() / "lab") / f"{name}-{_digest(src)}", unpack)
