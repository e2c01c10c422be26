#!/usr/bin/env bash
# The prepared GPU check: one CUDA GPU, torch preinstalled, no network; ≤ 8 minutes; writes one JSON file.
#
#   bash bench/gpu_check.sh [OUT.json]          # default: $OUT/gpu_check.json, else ./gpu_check.json
#   WHEELS=dir bash bench/gpu_check.sh          # install missing Python packages from carried wheels first
#
# What it measures (bench/gpu_check.py): GRPO steps of the tiny layout and of SmolKartoffel's shape in bf16
# autocast with per-phase times for both hf decoders; peak CUDA memory of the chunked log-prob head vs naive at
# V = 193,800 and 4 × 1,024 tokens; the fast generator's tokens/s vs model.generate; X-Codec2 full-size decode
# speed. Random weights throughout (no downloads). Wheels to carry when the machine lacks transformers
# (prepared where there is network, ~20 MB):
#   pip download --no-deps -d wheels transformers==5.24.0 tokenizers==0.23.3 safetensors==0.8.0 \
#       huggingface-hub regex pyyaml packaging tqdm typer filelock fsspec
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT_JSON=${1:-${OUT:-.}/gpu_check.json}
mkdir -p "$(dirname "$OUT_JSON")"

missing=$("$PY" - <<'PY'
import importlib.util
print(" ".join(m for m in ("transformers", "tokenizers", "safetensors", "numpy", "tqdm") if importlib.util.find_spec(m) is None))
PY
)
if [ -n "$missing" ]; then
  if [ -n "${WHEELS:-}" ] && [ -d "$WHEELS" ]; then
    # --no-deps from the carried folder only: nothing may replace the installed torch
    "$PY" -m pip install -q --no-index --no-deps "$WHEELS"/*.whl
  else
    echo "[gpu_check] missing Python packages: $missing; carry wheels and set WHEELS=dir (see the header)" >&2
    exit 2
  fi
fi
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else '[gpu_check] no CUDA GPU visible')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

# 470 s for the parts; the JSON is rewritten after each part, so a timeout keeps what finished.
timeout 470 "$PY" bench/gpu_check.py --out "$OUT_JSON" || echo "[gpu_check] stopped early (rc $?): partial $OUT_JSON" >&2
cat "$OUT_JSON"
