"""Supervised fine-tuning of the lab's tiny Llasa: text (and a voice reference) -> speech codes.

The model is an ordinary ``LlamaForCausalLM`` with the Llasa tokenizer layout (BPE text vocabulary, the 8
control tokens, then the 65,536 ``<|s_N|>`` tokens as added tokens, tied input/output embeddings). During
training the speech rows of the embedding are *factorised*: the row of code c = Σ_i d_i·4^i is

    e(c) = Σ_{i=0..7} D[i, d_i]                    (D: 8 × 4 learned vectors)

so with tied weights the speech logits are h·e(c) = Σ_i h·D[i, d_i] and the 65,536-way partition function
factorises exactly into 8 four-way ones:

    log Z = logaddexp( logsumexp_{t ∈ text} h·E[t],  Σ_i logsumexp_d h·D[i, d] )

That is the full softmax over the whole vocabulary at the cost of a small one; at the end the 65,536 rows
e(c) are written into the ordinary embedding matrix, so the saved model needs nothing of this module
(``test_lab`` checks that the saved model's log-probabilities equal the factorised ones).

Examples are plain prompts (``build_prompt_ids(text)``; the target in the corpus' plain voice) and voice-cloning
prompts (the reference transcript and codes of another utterance of the same speaker); the loss covers the
target codes and the end token only.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grpo.trainer import lr_lambda
from lab.corpus import PLAIN_SPEAKER
from tts.llasa import NUM_CODES, PromptFormat, SpeechVocab, build_prompt_ids

DIGITS, LEVELS = 8, 4
PROMPT_WORDS = "Convert the text to speech:"  # the default user template's words, for the BPE


@dataclass(frozen=True)
class SFTConfig:
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    intermediate: int = 704
    vocab: int = 1024  # BPE text vocabulary before the Llasa tokens
    max_sentences: int = 160  # LM sentences used (each spoken by two speakers): fewer, seen more often
    steps: int = 2000
    batch: int = 8
    lr: float = 2e-3
    min_lr: float = 1e-4
    warmup: int = 100
    clone_fraction: float = 0.4  # share of batches with voice-cloning prompts (one kind per batch: less padding)
    bf16: bool = True  # CPU bf16 autocast for the body: ~1.4x faster here (avx512_bf16)
    seed: int = 0
    threads: int = 2
    snapshot_every: int = 0  # also save the model every N steps (``train_lm(snapshots=)``): 0 = only at the end


def code_digits(codes: Tensor) -> Tensor:
    """codes [...] -> FSQ digits [..., 8] (first level least significant, as ``FSQIndexDecoder``)."""
    basis = LEVELS ** torch.arange(DIGITS, device=codes.device)
    return (codes.unsqueeze(-1) // basis) % LEVELS


class FactorisedHead(nn.Module):
    """Input embeddings and exact full-vocabulary log-probs with the speech rows factorised (see module doc)."""

    def __init__(self, model: nn.Module, s0: int) -> None:
        super().__init__()
        self.model, self.s0 = model, s0
        hidden = model.config.hidden_size
        self.digits = nn.Parameter(torch.randn(DIGITS, LEVELS, hidden) * (0.02 / math.sqrt(DIGITS)))
        # The text rows train as their own tensor; the 66,536-row matrix is only written by export(), so it
        # needs no gradient (a dense one would cost more than the whole model's backward).
        embedding = model.get_input_embeddings().weight
        self.text = nn.Parameter(embedding[:s0].detach().clone())
        embedding.requires_grad_(False)

    @classmethod
    def from_exported(cls, model: nn.Module, s0: int) -> FactorisedHead:
        """Recover the digit vectors of a saved model (rows e(c) = Σ_i D[i, d_i]: a least-squares solve that is
        exact up to a shift between digit positions, which no sum sees), to continue training it."""
        head = cls(model, s0)
        with torch.no_grad():
            rows = model.get_input_embeddings().weight[s0 : s0 + NUM_CODES].float()
            onehot = F.one_hot(code_digits(torch.arange(NUM_CODES)), LEVELS).float().reshape(NUM_CODES, -1)
            head.digits.copy_(torch.linalg.lstsq(onehot, rows, driver="gelsd").solution.reshape(DIGITS, LEVELS, -1))
        return head

    def text_rows(self) -> Tensor:
        return self.text

    def embed(self, ids: Tensor) -> Tensor:
        speech = ids >= self.s0
        text = F.embedding(torch.where(speech, 0, ids), self.text_rows())
        d = code_digits(torch.where(speech, ids - self.s0, 0))  # [B, T, 8]
        sp = self.digits[torch.arange(DIGITS, device=ids.device), d].sum(-2)  # [B, T, H]
        return torch.where(speech.unsqueeze(-1), sp, text)

    def target_logprobs(self, hidden: Tensor, targets: Tensor) -> Tensor:
        """log p(target) [N] for hidden [N, H] under the full (text + 65,536 speech) softmax."""
        text_logits = hidden @ self.text_rows().T  # [N, s0]
        digit_logits = torch.einsum("nh,kdh->nkd", hidden, self.digits)  # [N, 8, 4]
        log_z = torch.logaddexp(text_logits.logsumexp(-1), digit_logits.logsumexp(-1).sum(-1))
        speech = targets >= self.s0
        d = code_digits(torch.where(speech, targets - self.s0, 0))
        speech_logit = digit_logits.gather(-1, d.unsqueeze(-1)).squeeze(-1).sum(-1)
        text_logit = text_logits.gather(-1, torch.where(speech, 0, targets).unsqueeze(-1)).squeeze(-1)
        return torch.where(speech, speech_logit, text_logit) - log_z

    def loss(self, ids: Tensor, attn: Tensor, loss_mask: Tensor, *, bf16: bool = False) -> Tensor:
        """Mean negative log-likelihood of the tokens where ``loss_mask`` (predicting ids[:, 1:]).

        ``bf16``: the body runs under CPU bf16 autocast (float32 master weights; the head stays float32)."""
        with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = self.model.model(inputs_embeds=self.embed(ids), attention_mask=attn)
        h = out.last_hidden_state[:, :-1][loss_mask[:, 1:]].float()
        return -self.target_logprobs(h, ids[:, 1:][loss_mask[:, 1:]]).mean()

    @torch.no_grad()
    def export(self) -> None:
        """Write the text rows and e(c) for all codes into the ordinary (tied) embedding matrix."""
        codes = torch.arange(NUM_CODES)
        weight = self.model.get_input_embeddings().weight
        weight[: self.s0] = self.text
        weight[self.s0 : self.s0 + NUM_CODES] = self.digits[torch.arange(DIGITS), code_digits(codes)].sum(-2)


def build_model(tokenizer: Any, cfg: SFTConfig) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=max(1, cfg.heads // 2),
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


@dataclass(frozen=True)
class Example:
    prompt: tuple[int, ...]
    target: tuple[int, ...]  # speech ids + the end-of-speech id


def make_examples(
    utts: Sequence[Any],
    codes: Mapping[str, np.ndarray],
    tokenizer: Any,
    vocab: SpeechVocab,
    fmt: PromptFormat,
    plain_speaker: str = PLAIN_SPEAKER,
) -> tuple[list[Example], dict[str, list[Example]]]:
    """Plain examples (one per utterance) and, per utterance id, its cloning examples (one per reference).

    A plain example's target is its sentence in ``plain_speaker``'s voice where the corpus has that (every LM
    sentence does), so that a plain prompt has one right answer; a cloning example's is the utterance itself,
    with each of its speaker's four shortest other sentences as reference."""
    by_speaker: dict[str, list[Any]] = {}
    for u in utts:
        by_speaker.setdefault(u.speaker, []).append(u)
    plain_voice = {u.text: u for u in utts if u.speaker == plain_speaker}

    def target_of(u: Any) -> tuple[int, ...]:
        return (*vocab.codes_to_ids(codes[u.id]).tolist(), vocab.stop_id)

    plain, clone = [], {}
    for u in utts:
        target = target_of(u)
        prompt = tuple(build_prompt_ids(tokenizer, fmt, u.text, vocab=vocab))
        plain.append(Example(prompt, target_of(plain_voice.get(u.text, u))))
        # the speaker's shortest other sentences: short prompts, and the first is the reference clip that
        # `python -m lab pack` ships for that voice (data/lab_refs), so the lab's cloning rows are in-distribution
        refs = sorted((r for r in by_speaker[u.speaker] if r.text != u.text), key=lambda r: (len(r.text), r.id))
        clone[u.id] = [
            Example(
                tuple(build_prompt_ids(tokenizer, fmt, u.text, ref_text=r.text, ref_codes=codes[r.id], vocab=vocab)),
                target,
            )
            for r in refs[:4]
        ]
    return plain, clone


def collate(batch: Sequence[Example], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    longest = max(len(e.prompt) + len(e.target) for e in batch)
    ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    attn = torch.zeros(len(batch), longest, dtype=torch.long)
    loss = torch.zeros(len(batch), longest, dtype=torch.bool)
    for row, e in enumerate(batch):
        n, m = len(e.prompt), len(e.target)
        ids[row, : n + m] = torch.tensor(e.prompt + e.target)
        attn[row, : n + m] = 1
        loss[row, n : n + m] = True
    return ids, attn, loss


def train_lm(
    out_dir: Path,
    utts: Sequence[Any],
    codes: Mapping[str, np.ndarray],
    cfg: SFTConfig,
    *,
    sentences: Sequence[str],
    init_dir: Path | None = None,
    snapshots: Path | None = None,
) -> list[dict[str, float]]:
    """Fine-tune on the corpus' LM utterances and save model + tokenizer to ``out_dir``; returns the loss log.

    ``init_dir``: continue from that saved model (a second phase with its own schedule) instead of a fresh one.
    ``snapshots``: with ``cfg.snapshot_every``, a saved model every that many steps, ``snapshots/step-K``: how
    well the model speaks depends on how far it has memorised its sentences, and GRPO needs a model that speaks
    them imperfectly, so the build keeps the way there to choose from.
    """
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tts.tiny import build_tokenizer

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = random.Random(cfg.seed)
    fmt = PromptFormat()
    if init_dir is None:
        tokenizer = build_tokenizer(cfg.vocab, sentences=[PROMPT_WORDS, *sentences])
    else:
        tokenizer = AutoTokenizer.from_pretrained(init_dir)
    vocab = SpeechVocab.from_tokenizer(tokenizer, fmt.stop_token)
    texts = set(list(dict.fromkeys(u.text for u in utts if u.lm and u.split == "train"))[: cfg.max_sentences])
    lm_utts = [u for u in utts if u.lm and u.split == "train" and u.text in texts]
    plain, clone = make_examples(lm_utts, codes, tokenizer, vocab, fmt)
    if init_dir is None:
        model = build_model(tokenizer, cfg).train()
        head = FactorisedHead(model, vocab.first_id)
    else:
        model = AutoModelForCausalLM.from_pretrained(init_dir, dtype=torch.float32).train()
        head = FactorisedHead.from_exported(model, vocab.first_id)
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.0)

    schedule = lr_lambda(cfg.steps, cfg.warmup, "cosine", cfg.min_lr / cfg.lr)  # the trainer's warm-up + cosine

    log, running, t0 = [], 0.0, time.time()
    bar = tqdm(range(cfg.steps), desc="[lab] sft", unit="step")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cfg.lr * schedule(step)
        cloning = rng.random() < cfg.clone_fraction
        batch = []
        for _ in range(cfg.batch):
            i = rng.randrange(len(plain))
            refs = clone[lm_utts[i].id]
            batch.append(rng.choice(refs) if cloning and refs else plain[i])
        ids, attn, mask = collate(batch, vocab.stop_id)
        loss = head.loss(ids, attn, mask, bf16=cfg.bf16)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        running += float(loss.detach())
        if (step + 1) % 50 == 0 or step + 1 == cfg.steps:
            n = (step % 50) + 1
            log.append({"step": step + 1, "loss": running / n, "seconds": round(time.time() - t0, 1)})
            bar.set_postfix(loss=f"{running / n:.3f}")
            running = 0.0
        every = cfg.snapshot_every
        if snapshots is not None and every and (step + 1) % every == 0 and step + 1 < cfg.steps:  # the end: out_dir
            save_lm(head, tokenizer, snapshots / f"step-{step + 1}", copy=True)
    save_lm(head, tokenizer, out_dir)
    return log


def save_lm(head: FactorisedHead, tokenizer: Any, out_dir: Path, *, copy: bool = False) -> None:
    """Export the factorised rows and save the model in fp16 (``copy``: leave the training model in fp32).

    Training never reads the ordinary embedding matrix (``FactorisedHead`` trains ``text`` and ``digits``), so
    exporting into it mid-run changes nothing that follows."""
    import copy as copy_mod

    head.export()
    (copy_mod.deepcopy(head.model) if copy else head.model).half().save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
