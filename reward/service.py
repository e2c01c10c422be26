"""Transcription service for a second GPU: ``python -m reward.service --model ... --device cuda:1``.

GET /health → {"status": "ok", "model": ...}; POST /transcribe {"languages": [..], "audios": [base64 float32]}
→ {"transcripts": [{text, avg_logprob, no_speech_prob, silent, raw_text}]}; 422 with the reason for bad input.
Binds 127.0.0.1 unless told.
"""

from __future__ import annotations

import argparse
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


def create_app(transcriber: Transcriber, name: str = ""):
    from fastapi import FastAPI, HTTPException

    app = FastAPI(title="llasa-grpo transcriber")
    lock = threading.Lock()  # one model, one batch at a time

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": name}

    @app.post("/transcribe")
    def transcribe(batch: Batch) -> dict:
        if len(batch.languages) != len(batch.audios):
            raise HTTPException(422, f"{len(batch.languages)} languages for {len(batch.audios)} audios")
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

    uvicorn.run(create_app(WhisperTranscriber(config), config.model), host=host, port=port, log_level="warning")


if __name__ == "__main__":
    main()
