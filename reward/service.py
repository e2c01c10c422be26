"""Transcription service for a second GPU: ``python -m reward.service --model ... --device cuda:1``.

GET /health → {"status": "ok", "model": ...}; POST /transcribe {"languages": [..], "audios": [base64 float32]}
→ {"transcripts": [{text, avg_logprob, no_speech_prob, silent, raw_text}]}; 422 with the reason for bad input,
413 above the request bounds (``--max-clips``, ``--max-audio-s``, ``--max-request-mb``: the transcriber keys of
the same names). Binds 127.0.0.1 unless told; it has no authentication. Installed: ``llasa-grpo transcribe-serve``.
"""

from __future__ import annotations

import argparse
import sys
import threading
import typing
from collections.abc import Callable
from dataclasses import asdict, fields
from typing import Any

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


# TranscriberConfig keys that describe the client side (how to reach a service), not the model the service runs.
CLIENT_KEYS = ("backend", "url", "timeout_s", "retries", "language")


def _value_parser(hint: Any) -> Callable[[str], Any]:
    """Command-line text → a value of the config field's type (argparse names the flag of a bad one)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = len(args) < len(typing.get_args(hint))
    base = args[0] if optional else hint

    def parse(text: str) -> Any:
        if optional and text.lower() == "none":
            return None
        if base is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
            return text.lower() in ("true", "1", "yes")
        try:
            return base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {base.__name__}, got {text!r}") from None

    return parse


def main(argv: list[str] | None = None, prog: str = "python -m reward.service") -> None:
    from tomlconfig import field_comments, type_name

    defaults = TranscriberConfig()
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.splitlines()[0],
        epilog='The trainer side: [transcriber] backend = "http", url = "http://127.0.0.1:<port>".',
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="default %(default)s")
    comments, hints = field_comments(TranscriberConfig), typing.get_type_hints(TranscriberConfig)
    for f in fields(TranscriberConfig):
        if f.name in CLIENT_KEYS:
            continue
        flag = f.name.replace("_", "-")
        about = comments.get(f.name, "").replace("%", "%%")  # argparse formats help with %
        p.add_argument(
            "--" + flag,
            type=_value_parser(hints[f.name]),
            default=getattr(defaults, f.name),
            metavar=type_name(hints[f.name]).upper(),
            help=f"{about + ' ' if about else ''}(transcriber.{f.name}; default %(default)s)",
        )
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
