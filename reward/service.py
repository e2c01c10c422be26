"""Transcription service for a second GPU: ``python -m reward.service --model ... --device cuda:1``.

GET /health → {"status": "ok", "model": ...}; POST /transcribe {"languages": [..], "audios": [base64 float32]}
→ {"transcripts": [{text, avg_logprob, no_speech_prob, silent, raw_text}]}; 422 with the reason for bad input,
413 above the request bounds (``--max-clips``, ``--max-audio-s``, ``--max-request-mb``: the transcriber keys of
the same names). Binds 127.0.0.1 unless told; it has no authentication.
"""

from __future__ import annotations

import argparse
import sys
import threading
from dataclasses import asdict, fields

from pydantic import BaseModel

from reward.asr.http import decode_audio
from reward.asr.transcript import Transcriber
from reward.asr.whisper import WhisperTranscriber
from reward.config import TranscriberConfig


class Batch(BaseModel):
    """A batch of clips: one language code and one base64 little-endian float32 16 kHz array per clip."""

    languages: list[str]
    audios: list[str]


SAMPLE_RATE = 16000


def create_app(transcriber: Transcriber, name: str = "", limits: TranscriberConfig | None = None):
    """The service over ``transcriber``; ``limits`` (its ``max_*`` keys) bound every request."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse

    limits = limits or TranscriberConfig()
    max_bytes = int(limits.max_request_mb * 2**20)
    app = FastAPI(title="llasa-grpo transcriber")
    lock = threading.Lock()  # one model, one batch at a time

    @app.middleware("http")
    async def bound_body(request: Request, call_next):  # before the body is read, let alone parsed
        if request.method == "POST":
            length = request.headers.get("content-length", "")
            if not length.isdigit():
                return JSONResponse({"detail": "a Content-Length header is required"}, status_code=411)
            if int(length) > max_bytes:
                return JSONResponse(
                    {
                        "detail": f"request body of {int(length) / 2**20:.1f} MB exceeds "
                        f"transcriber.max_request_mb={limits.max_request_mb} (reward.service --max-request-mb)"
                    },
                    status_code=413,
                )
        return await call_next(request)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": name}

    @app.post("/transcribe")
    def transcribe(batch: Batch) -> dict:
        if len(batch.languages) != len(batch.audios):
            raise HTTPException(422, f"{len(batch.languages)} languages for {len(batch.audios)} audios")
        if len(batch.audios) > limits.max_clips:
            raise HTTPException(
                413,
                f"{len(batch.audios)} clips exceed transcriber.max_clips={limits.max_clips} "
                "(reward.service --max-clips)",
            )
        seconds = sum(len(a) * 3 // 4 for a in batch.audios) / 4 / SAMPLE_RATE  # from the base64 lengths
        if seconds > limits.max_audio_s:
            raise HTTPException(
                413,
                f"{seconds:.0f} s of audio exceed transcriber.max_audio_s={limits.max_audio_s} "
                "(reward.service --max-audio-s)",
            )
        try:
            audios = [decode_audio(a) for a in batch.audios]
        except ValueError as e:
            raise HTTPException(422, f"audios must be base64 float32: {e}") from e
        try:
            with lock:
                out = transcriber.transcribe(audios, batch.languages)
        except ValueError as e:  # bad input (e.g. an empty language): the client must not retry it
            raise HTTPException(422, str(e)) from e
        return {"transcripts": [asdict(t) for t in out]}

    return app


def main(argv: list[str] | None = None) -> None:
    defaults = TranscriberConfig()
    p = argparse.ArgumentParser(prog="python -m reward.service", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    for f in fields(TranscriberConfig):
        if f.name in ("backend", "url", "timeout_s", "retries", "language"):
            continue
        kind = {bool: lambda s: s.lower() in ("1", "true", "yes")}.get(type(f.default), type(f.default))
        if f.default is None:
            kind = float
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=getattr(defaults, f.name))
    args = vars(p.parse_args(argv))
    host, port = args.pop("host"), args.pop("port")
    config = TranscriberConfig(backend="whisper", **args)

    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: listening on {host}: reward.service has no authentication; anyone who reaches the port can "
            "send it arbitrary audio to decode and transcribe on this machine. Bind 127.0.0.1 and tunnel (ssh -L) "
            "unless the network is trusted.",
            file=sys.stderr,
            flush=True,
        )
    app = create_app(WhisperTranscriber(config), config.model, config)
    uvicorn.run(app, host=host, port=port, log_level="warning")


if __name__ == "__main__":
    main()
