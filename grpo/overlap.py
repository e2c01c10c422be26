"""``generation.overlap``: sample the next step while this one trains, and score while the log-probs run.

Both are wrappers, so the step itself stays sequential code:

- ``PrefetchingGenerator`` wraps a ``Generator``. Each ``generate`` call returns this step's rollouts (the
  prefetched ones when they were asked for, else generated now) and starts generating the prompts that
  ``upcoming()`` names, in a worker thread. That request samples from the weights of *before* this step's update
  (one update stale, which the importance weights correct for). ``upcoming`` only looks ahead, it takes nothing:
  the data position stays that of the steps actually trained, so a checkpoint written with a prefetch in flight
  resumes at the prefetched prompts, which are then generated again.
- ``BackgroundScoring`` runs a scoring function in a worker thread; ``start`` returns a function that waits for
  its result.

Only the ``vllm_server`` backend may overlap (the config checks it): the others sample from the very weights
being updated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from torch import nn

from grpo.rollouts import Generator, Rollouts

T = TypeVar("T")
PromptIds = tuple[tuple[int, ...], ...]


def _key(prompt_ids: Sequence[Sequence[int]]) -> PromptIds:
    return tuple(tuple(p) for p in prompt_ids)


class PrefetchingGenerator:
    """A ``Generator`` that generates the next step's prompts while the caller trains on this step's."""

    def __init__(self, generator: Generator, upcoming: Callable[[], Sequence[Sequence[int]] | None]) -> None:
        self.generator, self.upcoming = generator, upcoming
        self._pool: ThreadPoolExecutor | None = None
        self._pending: tuple[PromptIds, int, Future[Rollouts]] | None = None

    def generate(self, prompt_ids: Sequence[Sequence[int]], group_size: int) -> Rollouts:
        pending, self._pending = self._pending, None
        if pending is not None and pending[:2] == (_key(prompt_ids), group_size):
            rollouts = pending[2].result()
        else:  # first step, or the prefetch was dropped (close) or asked for other prompts
            rollouts = self.generator.generate(prompt_ids, group_size)
        following = self.upcoming()  # None after the last step: nothing is fetched past the run
        if following is not None:
            self._pool = self._pool or ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
            future = self._pool.submit(self.generator.generate, following, group_size)
            self._pending = (_key(following), group_size, future)
        return rollouts

    def sync_weights(self, model: nn.Module) -> None:
        self.generator.sync_weights(model)

    def close(self) -> None:
        """Drop the prefetch (a running request cannot be cancelled; its thread ends with it) and release the
        thread; the next ``generate`` starts afresh."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool, self._pending = None, None


class BackgroundScoring:
    """Runs scoring in a worker thread (``enabled``), or at once; either way ``start`` returns a waiter."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._pool: ThreadPoolExecutor | None = None

    def start(self, score: Callable[..., T], *args: object) -> Callable[[], T]:
        if not self.enabled:
            result = score(*args)
            return lambda: result
        self._pool = self._pool or ThreadPoolExecutor(max_workers=1, thread_name_prefix="score")
        return self._pool.submit(score, *args).result

    def close(self) -> None:
        """Release the thread (the next ``start`` makes a new one)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None
