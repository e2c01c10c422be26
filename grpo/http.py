"""One HTTP request helper for the project's clients, each with its own explicit retry policy.

A retry is only safe when the server did no work: the generation client retries refused connections only, the
transcription client also connections dropped before an answer and 502/503/504. Neither retries a read timeout
(the server may still be working on the request, under its lock). Imports no torch, so the transcription
client stays light.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass(frozen=True)
class RetryPolicy:
    tries: int  # attempts in all (1: no retry)
    errors: tuple[type[Exception], ...]  # transport errors after which the server cannot have done any work
    backoff: Callable[[int], float]  # seconds to wait before try k = 1, 2, ...
    statuses: frozenset[int] = field(default_factory=frozenset)  # answers that mean the same (e.g. 503)


class RetriesExhausted(Exception):
    """Every try failed in a retryable way; ``last`` describes the last failure."""

    def __init__(self, last: str) -> None:
        super().__init__(last)
        self.last = last


def request(client: httpx.Client, method: str, url: str, policy: RetryPolicy, **kwargs: Any) -> httpx.Response:
    """The first answer that is not retryable (any status: the caller judges it). Failures outside the policy
    propagate at once; when every try failed retryably, ``RetriesExhausted``."""
    last = ""
    for attempt in range(policy.tries):
        if attempt:
            time.sleep(policy.backoff(attempt))
        try:
            response = client.request(method, url, **kwargs)
        except policy.errors as e:
            last = repr(e)
            continue
        if response.status_code in policy.statuses:
            last = f"HTTP {response.status_code}: {response.text[:200]}"
            continue
        return response
    raise RetriesExhausted(last)
