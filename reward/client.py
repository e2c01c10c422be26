"""``HTTPTranscriber``: the Transcriber backend that calls ``python -m reward.service`` (e.g. on a second GPU).

Audio travels as base64 of little-endian float32 samples. Timeouts and transport errors are retried a bounded
number of times; then the step fails with an error that says how to start the service — never a silent zero.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence

import httpx
import numpy as np

from reward.config import TranscriberConfig
from reward.transcribe import Transcript, per_clip_languages


class TranscriberUnavailable(RuntimeError):
    pass


def encode_audio(audio: np.ndarray) -> str:
    return base64.b64encode(np.asarray(audio, dtype="<f4").reshape(-1).tobytes()).decode("ascii")


def decode_audio(data: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(data), dtype="<f4").astype(np.float32)


class HTTPTranscriber:
    def __init__(self, config: TranscriberConfig, client: httpx.Client | None = None) -> None:
        self.config = config
        self.url = config.url.rstrip("/")
        self.client = client or httpx.Client(timeout=config.timeout_s)

    def _post(self, path: str, payload: dict | None = None) -> dict:
        last: Exception | None = None
        for attempt in range(self.config.retries + 1):
            try:
                if payload is None:
                    response = self.client.get(self.url + path)
                else:
                    response = self.client.post(self.url + path, json=payload)
                if response.status_code >= 500:  # server-side hiccup: retry
                    last = RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
                else:
                    response.raise_for_status()
                    return response.json()
            except httpx.HTTPStatusError as e:  # 4xx: our request is wrong, retrying cannot help
                raise TranscriberUnavailable(f"[transcriber] url={self.url}{path}: {e.response.text[:300]}") from e
            except httpx.TransportError as e:  # refused, reset, timeout
                last = e
            if attempt < self.config.retries:
                time.sleep(min(0.5 * 2**attempt, 4.0))
        raise TranscriberUnavailable(
            f"[transcriber] url={self.url}: no answer after {self.config.retries + 1} tries ({last!r}); start it with "
            f"`python -m reward.service --model {self.config.model} --device cuda:1 --port <port>` or set "
            "transcriber.backend='whisper'"
        )

    def health(self) -> dict:
        return self._post("/health")

    def transcribe(self, audios: Sequence[np.ndarray], language: str | Sequence[str]) -> list[Transcript]:
        languages = per_clip_languages(self.config.language or language, len(audios))
        body = self._post("/transcribe", {"languages": languages, "audios": [encode_audio(a) for a in audios]})
        transcripts = [Transcript(**t) for t in body["transcripts"]]
        if len(transcripts) != len(audios):
            raise TranscriberUnavailable(f"[transcriber] url={self.url}: {len(transcripts)} for {len(audios)} clips")
        return transcripts
