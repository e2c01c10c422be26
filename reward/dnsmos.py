"""DNSMOS P.835 of a clip: signal (SIG), background (BAK) and overall (OVRL) quality on the 1-5 MOS scale.

Microsoft's non-intrusive DNSMOS models (no reference audio needed), run by ``speechmos``, whose wheel ships the
ONNX files; onnxruntime (a faster-whisper dependency) runs them offline on the CPU. Each 9 s window costs a
fraction of a second on a CPU core, and shorter clips are tiled to one window: the ``dnsmos`` reward term is
therefore off unless weighted, and ``evaluate.py`` measures it only with ``--dnsmos``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tts.constants import SAMPLE_RATE


@dataclass(frozen=True)
class Dnsmos:
    sig: float  # speech signal quality (distortion)
    bak: float  # background quality (noise)
    ovrl: float  # overall quality


def dnsmos(audio: np.ndarray) -> Dnsmos | None:
    """DNSMOS of a 16 kHz mono clip; None for a clip without samples (there is nothing to rate)."""
    try:
        from speechmos import dnsmos as speechmos_dnsmos
    except ImportError as e:
        raise ImportError(
            "[reward] DNSMOS needs speechmos (its ONNX models are in the wheel): `pip install '.[eval]'` or "
            "`pip install speechmos librosa requests`; or drop the dnsmos term / the --dnsmos flag"
        ) from e
    # speechmos rejects samples outside [-1, 1] and loops forever doubling an empty clip up to its window
    clip = np.clip(np.nan_to_num(np.asarray(audio, dtype=np.float32).reshape(-1)), -1.0, 1.0)
    if clip.size == 0:
        return None
    out = speechmos_dnsmos.run(clip, SAMPLE_RATE)
    return Dnsmos(sig=float(out["sig_mos"]), bak=float(out["bak_mos"]), ovrl=float(out["ovrl_mos"]))
