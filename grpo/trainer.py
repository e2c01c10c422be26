"""The GRPO training loop: ``GRPOTrainer.train_step`` is one whole step, read top to bottom.

    prompts ──► generator.generate ──► scorer.score ──► old / ref log-probs (only when needed)
            ──► group advantages (over all ranks' groups) ──► μ × [micro-batches: loss, backward] ──► all-reduce
            ──► clip ──► AdamW ──► scheduler ──► generator.sync_weights

``generation.overlap`` wraps the generator and the scoring (``grpo.overlap``), so the step stays sequential code;
``grpo.metrics.step_metrics`` turns what it measured into the logged numbers.

Everything the loop needs from outside is an interface (``Generator``, ``Scorer``, optionally ``SampleWriter``)
plus a list of ``Prompt`` (token ids and the opaque data row the scorer reads back from ``Rollouts.meta``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from grpo import distributed as dist
from grpo.advantages import group_advantages
from grpo.checkpoint import load_checkpoint, remove_checkpoints_after, rng_state, save_checkpoint
from grpo.config import TrainingConfig
from grpo.importance import importance_weights
from grpo.logprobs import token_logprobs
from grpo.loss import grpo_loss, loss_normalizer
from grpo.metrics import MetricsLogger, Progress, UpdateStats, read_metrics, step_metrics
from grpo.overlap import BackgroundScoring, PrefetchingGenerator
from grpo.rollouts import Generator, Rollouts, Sample, SampleWriter, Scorer, Scores
from grpo.tracking import TrackingRun, check_sinks, open_trackers


class NonFiniteError(FloatingPointError):
    """A step's loss or gradient norm is NaN/inf: the update is refused (the weights stay finite)."""


@dataclass(frozen=True)
class Prompt:
    ids: tuple[int, ...]  # the prompt's token ids, unpadded
    meta: Mapping[str, Any] = field(default_factory=dict)  # the data row; reaches the scorer via Rollouts.meta


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    start_step: int
    step: int  # steps completed in total
    interrupted: bool  # stopped by SIGINT/SIGTERM before max_steps
    checkpoint: Path | None  # the run's latest checkpoint: the last one written, else the one resumed from


def _local(t: Tensor) -> Tensor:
    """This rank's part of a parameter (an FSDP shard) or the parameter itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each decoder layer's activations in backward (non-reentrant: works with frozen inputs).

    transformers only checkpoints in training mode, so generation (eval mode) keeps its KV cache.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise ValueError(f"[grpo] run.gradient_checkpointing: {type(model).__name__} has no checkpointing switch")


def autocast_factory(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16 autocast where asked for (or, with ``auto``, where the GPU supports it); fp32 weights stay master."""
    bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "bf16" and device.type == "cuda" and not bf16_ok:
        raise ValueError(f"[grpo] run.precision='bf16' but {torch.cuda.get_device_name(device)} lacks bf16: use fp32")
    if precision == "bf16" or (precision == "auto" and bf16_ok):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


class PromptSampler:
    """Endless reproducible order over prompt indices: a new seeded permutation each epoch.

    Its whole state is (epoch, position), saved in checkpoints as the data position.
    """

    def __init__(self, num_prompts: int, seed: int) -> None:
        if num_prompts < 1:
            raise ValueError("[grpo] no prompts to train on: check the data file")
        self.n, self.seed, self.epoch, self.pos = num_prompts, seed, 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def take(self, k: int) -> list[int]:
        out = []
        for _ in range(k):
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._permutation()
            out.append(self._order[self.pos])
            self.pos += 1
        return out

    def peek(self, k: int) -> list[int]:
        """The next ``k`` indices, without taking them."""
        state, order = self.state_dict(), self._order
        out = self.take(k)
        self.epoch, self.pos, self._order = state["epoch"], state["position"], order
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.pos}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["position"])
        self._order = self._permutation()


def build_optimizer(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float, eps: float):
    """AdamW; like the HF Trainer, no weight decay on biases and norm weights (1-D parameters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas, eps=eps)


def lr_lambda(total: int, warmup: int, schedule: str, min_ratio: float) -> Callable[[int], float]:
    """Multiplier of the base lr at optimizer update s (0-based).

    warm-up: (s + 1) / W for s < W (the first update already moves); then constant 1, or cosine
    min + (1 − min)·½(1 + cos(π·(s − W)/(total − W))).
    """

    def f(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (s - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


@dataclass
class _Batch:
    """A step's rollouts as model inputs on the device; log-prob tensors are [N, C] (0 beyond each mask)."""

    prompt_ids: Tensor  # [N, P]
    prompt_mask: Tensor  # [N, P]
    completion_ids: Tensor  # [N, C]
    completion_mask: Tensor  # [N, C] float
    advantages: Tensor | None = None  # [N], set once the rewards are in
    old_logps: Tensor | None = None  # [N, C]
    ref_logps: Tensor | None = None  # [N, C]

    def micro_batch(self, rows: slice) -> tuple[Tensor, Tensor, Tensor, int]:
        """(input_ids, attention_mask, completion_mask, C) of ``rows``, cut to their own padding extent."""
        pmask, cmask = self.prompt_mask[rows], self.completion_mask[rows]
        c = max(1, int(cmask.sum(dim=1).max()))
        first = int((pmask.sum(dim=0) > 0).nonzero()[0])  # leftmost column any row uses
        ids = torch.cat([self.prompt_ids[rows, first:], self.completion_ids[rows, :c]], dim=1)
        mask = torch.cat([pmask[:, first:], cmask[:, :c].long()], dim=1)
        return ids, mask, cmask[:, :c], c


class _Timer:
    """Wall time per phase. ``sync`` waits for this device's queued kernels so that GPU work is counted in the
    phase that launched it; phases that launch none (scoring, which may run in another thread while this one
    trains) must not sync, or they would wait for, and be charged with, the training kernels."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.times = device, defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, name: str, *, sync: bool = True) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        if sync and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times[name] += time.perf_counter() - t0


class _StopOnSignal:
    """First SIGINT/SIGTERM: ask the loop to stop after the current step. A second SIGINT aborts at once."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.requested, self.say = False, say
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.say(
            f"[grpo] {signal.Signals(signum).name}: finishing this step, then writing a checkpoint "
            "(Ctrl-C again to abort without one)"
        )

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class GRPOTrainer:
    """Trains ``policy`` with GRPO on ``prompts`` using ``generator`` for sampling and ``scorer`` for rewards.

    Padding is the generator's business (its ``Rollouts`` carry masks). ``ref_model`` is required when
    ``grpo.beta > 0`` and should be the *initial* policy (not a checkpoint's), frozen. ``tokenizer`` is saved
    into every checkpoint so that it is a complete model folder. Under torchrun each process passes the same
    prompts and config; ``dist_info`` says which share of each step's prompts is its own.
    """

    def __init__(
        self,
        policy: nn.Module,
        generator: Generator,
        scorer: Scorer,
        prompts: Sequence[Prompt],
        config: TrainingConfig,
        *,
        ref_model: nn.Module | None = None,
        tokenizer: Any = None,
        dist_info: dist.DistInfo | None = None,
    ) -> None:
        self.cfg = config
        g, o, r = config.grpo, config.optim, config.run
        if g.beta > 0 and ref_model is None:
            raise ValueError(f"[grpo] grpo.beta={g.beta} needs a reference model (or set grpo.beta = 0)")
        check_sinks(r.report_to)  # a tracker that is not installed fails now, on every rank, not at train()
        if config.generation.overlap:
            generator = PrefetchingGenerator(generator, upcoming=self._upcoming_prompt_ids)
        self.policy, self.generator, self.scorer, self.prompts = policy, generator, scorer, list(prompts)
        self.scoring = BackgroundScoring(enabled=config.generation.overlap)
        self.ref_model = None if g.beta == 0 else ref_model
        self.tokenizer = tokenizer
        self.dist = dist_info or dist.DistInfo(device=next(policy.parameters()).device)
        self.device = next(policy.parameters()).device
        self.run_dir = Path(r.output_dir)
        self.autocast = autocast_factory(self.device, r.precision)

        seed_everything(r.seed + self.dist.rank)  # ranks sample different completions
        self.sampler = PromptSampler(len(self.prompts), r.seed)  # same order on every rank
        self.data_state = self.sampler.state_dict()  # data position after the last completed step's prompts
        dist.broadcast_parameters(policy)
        if r.gradient_checkpointing:
            enable_activation_checkpointing(policy)
        if self.ref_model is not None:
            self.ref_model.eval().requires_grad_(False)
        # Shard the decoder layers before the optimizer, which must hold the shards; one process has nothing to
        # shard over and trains the whole model, exactly what "fsdp" over one rank would compute.
        if r.parallel == "fsdp" and self.dist.world_size > 1:
            dist.shard_model(policy)
            if self.ref_model is not None:
                dist.broadcast_parameters(self.ref_model)
                dist.shard_model(self.ref_model)
        self.optimizer = build_optimizer(policy, o.lr, o.betas, o.weight_decay, o.adam_eps)
        total = r.max_steps * g.num_iterations
        warmup = math.ceil(o.warmup_ratio * total)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(total, warmup, o.schedule, o.min_lr_ratio)
        )
        self.step = 0
        self.last_rollouts: Rollouts | None = None  # this rank's latest step, for samples and tests
        self.last_scores: Scores | None = None
        # Extra JSON-able entries of every checkpoint's trainer state (train.py records the resolved config, which
        # the trackers of run.report_to also record; without it they get the training sections).
        self.checkpoint_extra: dict[str, Any] = {}
        # README.md of every checkpoint: (step, latest metrics) -> text (train.py: llasa_grpo.card); None = none.
        self.model_card: Callable[[int, Mapping[str, float]], str] | None = None
        self.last_metrics: dict[str, float] = {}  # the last completed step's (for the model card)
        self.failure_checkpoint: Path | None = None  # written when a step raised (see train())
        self._saved_step: int | None = None
        self._updated_this_step = False
        self._step_start: dict[str, Any] = {}

    # ----------------------------------------------------------------------------------------------------------
    # One step

    def train_step(self) -> dict[str, float]:
        """One GRPO step on the next prompts; returns its metrics (identical on every rank)."""
        g, gen = self.cfg.grpo, self.cfg.generation
        # The last completed step's resume point, for a checkpoint should this step fail (train()).
        self._updated_this_step = False
        self._step_start = {"data": dict(self.data_state), "rng": rng_state()}
        timer = _Timer(self.device)
        t_step = time.perf_counter()
        self.policy.train()

        # 1. This rank's share of the step's prompts, G completions each (whole groups). With generation.overlap
        #    they were sampled while the last step trained (grpo.overlap.PrefetchingGenerator).
        prompts = self._take_prompts()
        self.data_state = self.sampler.state_dict()  # where the next step starts (a prefetch only peeks)
        with timer("generate"):
            rollouts = self.generator.generate([p.ids for p in prompts], g.group_size)
        rollouts = dataclasses.replace(rollouts, meta=tuple(p.meta for p in prompts for _ in range(g.group_size)))
        n = len(rollouts)
        batch = _Batch(
            prompt_ids=rollouts.prompt_ids.to(self.device),
            prompt_mask=rollouts.prompt_mask.long().to(self.device),
            completion_ids=rollouts.completion_ids.to(self.device),
            completion_mask=rollouts.completion_mask.float().to(self.device),
        )

        # 2. Rewards, where the completions are. With overlap they are scored in another thread (e.g. on the
        #    transcription service's GPU) while this one computes the log-probs below, which do not need them.
        wait_for_scores = self.scoring.start(self._score, rollouts, timer)

        # 3. The π_old rule: log π_old (the policy before this step's updates) is a pass of its own only with
        #    μ = num_iterations > 1 (later updates move away from it). With μ = 1 the only update starts from
        #    π_old, so π_old = π_θ.detach() of the update's own forward (step 5), even when another engine
        #    sampled. Reference log-probs only when β > 0.
        if g.num_iterations > 1:
            with timer("old_logps"):
                batch.old_logps = self._logps_no_grad(self.policy, batch)
        # Another sampler (vLLM; the loop in bfloat16; a processed distribution) has its own numbers for the
        # sampled tokens: the loss is reweighted by truncated π_old / π_sampler (grpo.importance, step 5).
        sampler_logps = None if rollouts.sampler_logps is None else rollouts.sampler_logps.to(self.device)
        if self.ref_model is not None:
            with timer("ref_logps"):
                batch.ref_logps = self._logps_no_grad(self.ref_model, batch)

        # 4. Advantages over every rank's groups (groups are never split; batch scaling sees the whole batch).
        scores = wait_for_scores()
        rewards_all = dist.all_gather(scores.rewards.float().cpu())  # [world · N]
        adv_all = group_advantages(rewards_all, g.group_size, g.advantage_scale, g.advantage_eps)
        batch.advantages = adv_all[self.dist.rank * n : (self.dist.rank + 1) * n].to(self.device)

        # 5. μ optimizer updates, each over the whole batch in micro-batches. The normaliser is that of the whole
        #    step on all ranks, so Σ (micro-batch losses) over ranks is the full-batch loss.
        normalizer = dist.all_reduce_sum(loss_normalizer(batch.completion_mask, g.loss_aggregation, gen.max_new_tokens))
        params = [p for p in self.policy.parameters() if p.requires_grad]
        clip = self.cfg.optim.max_grad_norm if self.cfg.optim.max_grad_norm > 0 else float("inf")
        updates: list[UpdateStats] = []
        seen_old = torch.zeros_like(batch.completion_mask)  # π_old of the sampled tokens, for the is/* statistics
        with timer("update"):
            for iteration in range(g.num_iterations):
                with_entropy = iteration == 0  # the sampling policy's entropy
                update = UpdateStats()
                self.optimizer.zero_grad(set_to_none=True)
                for rows in self._micro_slices(n):
                    ids, mask, cmask, c = batch.micro_batch(rows)
                    with self.autocast():
                        out = token_logprobs(
                            self.policy,
                            ids,
                            mask,
                            c,
                            temperature=gen.temperature,
                            chunk_tokens=g.logprob_chunk_tokens,
                            return_entropy=with_entropy,
                        )
                    logps, entropy = out if with_entropy else (out, None)
                    old = logps.detach() if batch.old_logps is None else batch.old_logps[rows, :c]  # π_old rule
                    weights = None
                    if sampler_logps is not None:
                        weights = self._importance(old, sampler_logps[rows, :c], cmask, stats=False)[0]
                        if iteration == 0:
                            seen_old[rows, :c] = old
                    loss, loss_stats = grpo_loss(
                        logps,
                        old,
                        batch.advantages[rows],
                        cmask,
                        ref_logps=None if batch.ref_logps is None else batch.ref_logps[rows, :c],
                        beta=g.beta,
                        eps_low=g.eps_low,
                        eps_high=g.eps_high,
                        aggregation=g.loss_aggregation,
                        max_completion_length=gen.max_new_tokens,
                        normalizer=normalizer,
                        token_weights=weights,
                    )
                    loss.backward()
                    update.add(loss, loss_stats, cmask, entropy)
                dist.all_reduce_gradients(params)  # replicated gradients; FSDP's shards were reduced in backward
                update.grad_norm = dist.clip_grad_norm(params, clip)
                update.lr = self.optimizer.param_groups[0]["lr"]
                self._refuse_non_finite(update.sums["loss"], update.grad_norm)
                self._updated_this_step = True  # from here on the step's state is no longer the last completed one
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)  # spent: not held through the next generation
                self.scheduler.step()
                updates.append(update)

        is_stats = {} if sampler_logps is None else self._importance(seen_old, sampler_logps, batch.completion_mask)[1]

        # 6. The sampler follows the policy.
        self.generator.sync_weights(self.policy)
        self.last_rollouts, self.last_scores = rollouts, scores
        times = {f"time/{k}": v for k, v in timer.times.items()}
        times["time/step"] = time.perf_counter() - t_step
        sizes = {"group_size": g.group_size, "world_size": self.dist.world_size}
        return step_metrics(rollouts, {**scores.metrics, **is_stats}, rewards_all, updates, times, **sizes)

    def _importance(
        self, old: Tensor, sampler: Tensor, mask: Tensor, *, stats: bool = True
    ) -> tuple[Tensor, dict[str, float]]:
        g = self.cfg.grpo
        return importance_weights(
            old, sampler, mask, level=g.importance_level, cap=g.importance_cap, mode=g.importance_mode, stats=stats
        )

    def _refuse_non_finite(self, loss: float, grad_norm: float) -> None:
        """Refuse the update, before it touches the weights, when the loss or the gradient is not finite: a NaN
        step would silently turn every parameter into NaN (and be checkpointed). Every rank decides alike."""
        bad = [f"loss={loss}"] if not math.isfinite(loss) else []
        bad += [] if math.isfinite(grad_norm) else [f"grad_norm={grad_norm}"]
        if dist.any_rank(bool(bad)):
            raise NonFiniteError(
                f"[grpo] step {self.step + 1}: non-finite {', '.join(bad) or 'loss on another rank'}; the update "
                "was refused and the weights are those of the last finite step. Check the rewards, "
                "generation.temperature, optim.lr and grpo.importance_* settings"
            )

    def _take_prompts(self) -> list[Prompt]:
        """The step's prompts are drawn globally (same order on every rank); rank r takes the r-th share."""
        return self._rank_share(self.sampler.take(self.cfg.grpo.prompts_per_step * self.dist.world_size))

    def _upcoming_prompt_ids(self) -> list[tuple[int, ...]] | None:
        """What generation.overlap prefetches: the next step's prompts, looked at but not taken; None after the
        last step (``self.step`` counts completed steps, so during a step it is that step's index)."""
        if self.step + 1 >= self.cfg.run.max_steps:
            return None
        chosen = self.sampler.peek(self.cfg.grpo.prompts_per_step * self.dist.world_size)
        return [p.ids for p in self._rank_share(chosen)]

    def _rank_share(self, chosen: list[int]) -> list[Prompt]:
        per_rank = self.cfg.grpo.prompts_per_step
        return [self.prompts[i] for i in chosen[self.dist.rank * per_rank : (self.dist.rank + 1) * per_rank]]

    def _score(self, rollouts: Rollouts, timer: _Timer) -> Scores:
        with timer("score", sync=False):
            scores = self.scorer.score(rollouts)
        if scores.rewards.shape != (len(rollouts),):
            raise ValueError(
                f"[grpo] scorer returned rewards of shape {tuple(scores.rewards.shape)}, expected ({len(rollouts)},)"
            )
        return scores

    @torch.no_grad()
    def _logps_no_grad(self, model: nn.Module, batch: _Batch) -> Tensor:
        """log-probs [N, C] of the batch's completion tokens under ``model`` (eval mode), 0 beyond each mask."""
        was_training = model.training
        model.eval()
        out = torch.zeros_like(batch.completion_mask)
        device = next(model.parameters()).device  # the reference may live elsewhere (grpo.reference_device)
        for rows in self._micro_slices(len(batch.completion_ids)):
            ids, mask, _, c = batch.micro_batch(rows)
            with self.autocast():
                out[rows, :c] = token_logprobs(
                    model,
                    ids.to(device),
                    mask.to(device),
                    c,
                    temperature=self.cfg.generation.temperature,
                    chunk_tokens=self.cfg.grpo.logprob_chunk_tokens,
                ).to(out.device)
        model.train(was_training)
        return out

    def _micro_slices(self, n: int) -> list[slice]:
        m = self.cfg.grpo.micro_batch_size
        return [slice(s, min(s + m, n)) for s in range(0, n, m)]

    # ----------------------------------------------------------------------------------------------------------
    # The run

    def save(self, *, data_state: Mapping[str, int] | None = None, rng: dict[str, Any] | None = None) -> Path:
        """Checkpoint the last completed step (refused, naming the parameter, if a weight is not finite)."""
        bad = next((n for n, p in self.policy.named_parameters() if not bool(_local(p).isfinite().all())), None)
        if dist.any_rank(bad is not None):
            raise NonFiniteError(
                f"[grpo] step {self.step}: parameter {bad or '(on another rank)'} is not finite: "
                f"refusing to write a checkpoint of NaN/inf weights into {self.run_dir}"
            )
        path = save_checkpoint(
            self.run_dir,
            self.step,
            model=self.policy,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            tokenizer=self.tokenizer,
            keep_last=self.cfg.run.keep_last,
            state={"data": dict(data_state or self.data_state), **self.checkpoint_extra},
            rng=rng,
            readme=self.model_card(self.step, self.last_metrics) if self.model_card and self.dist.is_main else None,
        )
        self._saved_step = self.step
        return path

    def load(self, checkpoint: str | Path) -> None:
        state = load_checkpoint(checkpoint, model=self.policy, optimizer=self.optimizer, scheduler=self.scheduler)
        self.step = int(state["step"])
        data = {"epoch": int(state["data"]["epoch"]), "position": int(state["data"]["position"])}
        if data["position"] > self.sampler.n:  # the data file shrank since: the epoch in progress cannot go on
            if self.dist.is_main:
                print(
                    f"[grpo] {checkpoint}: data position {data['position']} is past the {self.sampler.n} prompts of "
                    f"the data now (the file shrank?): continuing with epoch {data['epoch'] + 1} from its start",
                    flush=True,
                )
            data = {"epoch": data["epoch"] + 1, "position": 0}
        self.sampler.load_state_dict(data)
        self._apply_optim_config()
        self.data_state = self.sampler.state_dict()
        self.generator.sync_weights(self.policy)

    def _apply_optim_config(self) -> None:
        """After loading a checkpoint: the optimizer's hyperparameters are the config's, not the checkpoint's (a
        resumed run's ``--set optim.lr=...`` takes effect); the lr is base × the schedule at the updates done."""
        o = self.cfg.optim
        self.scheduler.base_lrs = [o.lr] * len(self.optimizer.param_groups)
        for group, lam in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas, strict=True):
            group["initial_lr"] = o.lr
            group["lr"] = o.lr * lam(self.scheduler.last_epoch)
            group["betas"], group["eps"] = o.betas, o.adam_eps
            group["weight_decay"] = o.weight_decay if all(p.dim() >= 2 for p in group["params"]) else 0.0
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def train(self, resume: str | Path | None = None) -> TrainResult:
        """Run until ``run.max_steps``, or until SIGINT/SIGTERM (then checkpoint and return ``interrupted``)."""
        r = self.cfg.run
        main = self.dist.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume is not None:
            self.load(resume)  # also pushes the checkpoint's weights to the generator
        else:
            self.generator.sync_weights(self.policy)  # a server may hold another run's weights (hf: no-op)
        start = self.step
        logger = MetricsLogger(self.run_dir, enabled=main)
        last_logged = logger.truncate_after(self.step)
        bar = Progress(r.max_steps, self.step, enabled=main)
        say = bar.write if main else (lambda _m: None)
        if main:
            rows = read_metrics(self.run_dir)
            self.last_metrics = {k: v for k, v in rows[-1].items() if k not in ("step", "time")} if rows else {}
            logger.trackers = open_trackers(r.report_to, self._tracking_run(resume, last_logged), say)
        checkpoint = Path(resume) if resume is not None else None
        self._saved_step = self.step if resume is not None else None
        if resume is not None and main:
            # Checkpoints after the resumed step belong to the abandoned continuation: pruning and
            # `--resume auto` must not pick them over the steps this run is about to write.
            if later := remove_checkpoints_after(self.run_dir, self.step):
                say(f"[grpo] resumed at step {self.step}: removed later checkpoints {', '.join(p.name for p in later)}")
        interrupted = False
        try:
            with _StopOnSignal(say) as stop:
                while self.step < r.max_steps:
                    try:
                        metrics = self.train_step()
                    except Exception as e:
                        self._save_after_failure(e, say)
                        raise
                    self.step += 1
                    self.last_metrics = metrics
                    if self.step % r.log_every == 0 or self.step == r.max_steps:
                        logger.log(self.step, metrics)
                    bar.update(metrics)
                    # step 1 too: its samples are the starting policy's, the "before" to compare with
                    if main and r.sample_every and (self.step == 1 or self.step % r.sample_every == 0):
                        logger.log_samples(self.step, self._write_samples())
                    interrupted = dist.any_rank(stop.requested)
                    if interrupted or self.step == r.max_steps or (r.save_every and self.step % r.save_every == 0):
                        checkpoint = self.save()
                    if interrupted:
                        break
        finally:
            # A prefetch still in flight (interrupted, or an error) is dropped: its prompts were not taken, so a
            # later train() call or a resume from the checkpoint generates them again.
            if isinstance(self.generator, PrefetchingGenerator):
                self.generator.close()
            self.scoring.close()
            bar.close()
            logger.close()
        return TrainResult(self.run_dir, start, self.step, interrupted and self.step < r.max_steps, checkpoint)

    def _save_after_failure(self, error: Exception, say: Callable[[str], None]) -> None:
        """A step raised (a service gone, a bad row, a non-finite loss): checkpoint the last *completed* step, with
        the data position and RNG of that moment, so no finished step is lost. Only when the failed step had not
        updated the weights yet (else no consistent state is left in memory) and in a single process (a save is
        collective; the other ranks are not here)."""
        failed = self.step + 1
        if self._updated_this_step:
            say(f"[grpo] step {failed} failed after an optimizer update: no consistent state to checkpoint")
        elif self.dist.world_size > 1:
            say(f"[grpo] step {failed} failed on rank {self.dist.rank}: not checkpointing (a save needs every rank)")
        elif self.step > 0 and self._saved_step != self.step:
            try:
                self.failure_checkpoint = self.save(data_state=self._step_start["data"], rng=self._step_start["rng"])
            except Exception as save_error:  # the step's own error is the one to report
                say(f"[grpo] step {failed} failed, and so did saving step {self.step}: {save_error}")
                return
            name = type(error).__name__
            say(f"[grpo] step {failed} failed ({name}): saved step {self.step} to {self.failure_checkpoint}")

    def _tracking_run(self, resume: str | Path | None, last_logged: int | None) -> TrackingRun:
        r = self.cfg.run
        config = self.checkpoint_extra.get("config") or dataclasses.asdict(self.cfg)
        return TrackingRun(
            run_dir=self.run_dir,
            project=r.tracker_project,
            name=r.run_name or self.run_dir.resolve().name,
            config=config,
            resume_step=self.step if resume is not None else None,
            last_logged=last_logged,
        )

    def _write_samples(self) -> list[Sample]:
        """Audio/text of this rank's latest step, when the scorer can write them (a ``SampleWriter``); returns
        what it wrote, for the trackers."""
        if not isinstance(self.scorer, SampleWriter) or self.last_rollouts is None or self.last_scores is None:
            return []
        directory = self.run_dir / "samples" / f"step-{self.step:06d}"
        directory.mkdir(parents=True, exist_ok=True)
        written = self.scorer.write_samples(self.last_rollouts, self.last_scores, directory, self.cfg.run.num_samples)
        return list(written or ())
