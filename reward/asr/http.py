"""``HTTPTranscriber``: the Transcriber backend that calls ``python -m reward.service`` (e.g. on a second GPU).

Audio travels as base64 of little-endian float32 samples. Only failures that say nothing was processed are
retried (no connection, connection dropped before an answer, 502/503/504 from a proxy or a starting server);
a read timeout is not — the server may still be working through the batch, and a retry would queue the same
work again behind its lock. Every failure ends in an error that says what to change — never a silent zero.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np

from grpo.http import RetriesExhausted, RetryPolicy, request
from reward.asr.transcript import Transcript, per_clip_languages
from reward.config import TranscriberConfig

RETRY_STATUS = frozenset({502, 503, 504})
RETRY_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)


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
        self.retry = RetryPolicy(
            tries=config.retries + 1,
            errors=RETRY_ERRORS,
            statuses=RETRY_STATUS,
            backoff=lambda k: min(0.5 * 2 ** (k - 1), 4.0),
        )

    def _request(self, method: str, path: str, payload: dict | None = None, clips: int = 0) -> Any:
        """One call with bounded retries of the failures where the server did no work."""
        where = f"[transcriber] url={self.url}{path}"
        try:
            response = request(self.client, method, self.url + path, self.retry, json=payload)
        except RetriesExhausted as e:
            raise TranscriberUnavailable(
                f"{where}: no answer after {self.retry.tries} tries ({e.last}); is the service running? Start it "
                f"with `python -m reward.service --model {self.config.model} --device cuda:1 --port <port>` and set "
                "transcriber.url, or set transcriber.backend='whisper'"
            ) from None
        except httpx.TimeoutException as e:  # read/write/pool timeout: the server may still be working
            raise TranscriberUnavailable(
                f"{where}: no answer within transcriber.timeout_s={self.config.timeout_s} for {clips} clips "
                f"({type(e).__name__}): raise transcriber.timeout_s (a batch takes longer on a busy or slow GPU)"
            ) from e
        except httpx.TransportError as e:
            raise TranscriberUnavailable(f"{where}: {e!r}") from e
        if response.is_error:  # our request or the server's model failed: retrying cannot help
            raise TranscriberUnavailable(f"{where}: HTTP {response.status_code}: {response.text[:300]}")
        return response.json()

    def health(self) -> dict:
        """The service's status and model name (``recipe.check_resources`` calls it before a run starts)."""
        return self._request("GET", "/health")

    def transcribe(self, audios: Sequence[np.ndarray], language: str | Sequence[str]) -> list[Transcript]:
        languages = per_clip_languages(language, len(audios))
        transcripts: list[Transcript] = []
        for part in self._parts(audios):  # requests within the service's bounds (transcriber.max_*)
            payload = {"languages": [languages[i] for i in part], "audios": [encode_audio(audios[i]) for i in part]}
            body = self._request("POST", "/transcribe", payload, clips=len(part))
            transcripts += [Transcript(**t) for t in body["transcripts"]]
        if len(transcripts) != len(audios):
            raise TranscriberUnavailable(f"[transcriber] url={self.url}: {len(transcripts)} for {len(audios)} clips")
        return transcripts

    def _parts(self, audios: Sequence[np.ndarray]) -> list[list[int]]:
        """Clip indices in order, split so that no request exceeds max_clips, max_audio_s or max_request_mb."""
        c = self.config
        max_samples = min(c.max_audio_s * 16000, c.max_request_mb * 2**20 * 3 / 4 / 4 * 0.95)  # JSON overhead
        parts: list[list[int]] = [[]]
        samples = 0
        for i, a in enumerate(audios):
            n = int(np.asarray(a).size)
            if parts[-1] and (len(parts[-1]) >= c.max_clips or samples + n > max_samples):
                parts.append([])
                samples = 0
            parts[-1].append(i)
            samples += n
        return [p for p in parts if p] or [[]]
