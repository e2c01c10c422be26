"""How well does a lab LM speak its training sentences, over sampling seeds, and where do its errors start?

    python bench/lab_speak.py --seeds 0 1 2 3                         # the committed lab-llasa, lab.toml's T
    python bench/lab_speak.py --seeds 0 1 2 3 --onset 3 --build runs/lab-build
    python bench/lab_speak.py --model runs/lab-build-v2/llasa --codec runs/lab-build-v2/codec --seeds 0 1 2 3
    python bench/lab_speak.py --rows 32 --group-size 8 --window 10 --beam 1 --per-row  # spread, as the reward sees it

The test (``tests/test_lab.py``) samples 8 training sentences × 2 at one seed; this prints that measurement
for each seed and their mean. ``--onset K`` appends the first K codes of the sentence's own utterance (from the
build's ``codes.npz``) to every prompt, so the model continues from a correct start: the gap to the free run
is what the onset alone costs. ``--nll`` prints, per utterance, the teacher-forced mean negative log-likelihood
and its three largest tokens (with their positions in the target).

Measured on this CPU (Whisper base beam 5; T 0.9, 300 tokens):
- the committed model of that time (the first recipe's final LM), free run, seeds 0-3: 0.440 0.422 0.834 0.679
  (0.594; seed 0 was the test's 0.44); with ``--window 10`` (the reward's): 0.499 0.435 0.828 0.714 (0.619).
- its ``--onset 3`` (``--window 10``): 0.335 0.343 0.335 0.335 (0.337): from a correct start the samples hardly
  differ between seeds. ``--nll``: mean 0.008-0.042 nats per token; every utterance's largest is its first or
  second code (0.75-7.2 nats), the rest stay below 0.3: what follows the onset is learnt by heart, the onset
  is not.
- 400 more SFT steps from it (lr 3e-4; ``--window 10``) did not help: plain loss, seeds 0-2: 0.617 0.620 1.023;
  the onset's loss weighted ×20: 0.724 0.661 0.874 0.590 (its onset NLL stayed 0.9-5.1); 10 % of the target's
  input codes swapped for others of the batch: 1.23; the onset swapped for another utterance's of the same
  speaker in half the examples: 1.76.
- a build with today's layout (``python -m lab build --out runs/lab-build-v2``, not committed; see the
  README), ``--window 10``: seeds 0-3: 0.458 0.371 0.310 0.433 (0.393); ``--group-size 4``, seeds 0-1: 0.463
  0.570; about 0.45 over those 128 samples.
- the onset's voice: each LM sentence had two voices drawn at random, and a plain prompt names none. The first
  code is nearly fixed by the first word and the voice (conditional entropy 0.12 nats over the LM utterances),
  and the sibling puts all its mass on the right ones for consonant-initial sentences ("The", "Please", "We":
  1.00) but not for vowel-initial ones, whose onset differs by voice ("Iris" 0.06, "After" 0.24, "Anna" 0.37):
  sampling another voice's onset, it continues a sentence that voice did speak. Its free-run samples with the
  right first 3 codes: WER 0.27 (49 of 64), with a wrong start 1.31.
- so the corpus now gives every LM sentence the plain voice m1 (plus one other) and plain prompts target m1
  (``lab.corpus.PLAIN_SPEAKER``). That build (``runs/lab-build-v3``, before its second decoder phase, not
  committed): seeds 0-3 0.390 0.231 0.231 0.231 (0.271) at T 0.9; but 32 rows × 8 with the reward's Whisper
  (``--per-row --group-size 8 --window 10 --beam 1``; measured by a probe of the same settings that seeded
  each 8 rows apart) show no spread within a group on 30 of 32 rows (capped WER 0.28): it
  says each sentence the same way every time. Spread comes at higher temperatures: T 1.3, 16 rows, 0.30 with
  one or two samples of 8 derailed on most rows; T 1.4, 32 rows, 0.42; T 1.6, 16 rows, 0.46. This bench at T
  1.3: 0.512 0.277 0.298 0.367 (0.364); at T 1.4: 0.560 0.358 0.330 0.424 (0.418).
- so the spread has to come from a less memorised LM: the LM stages of that recipe on the committed codec
  (``python -m lab build --codec lab-xcodec2 --out runs/lab-build-v4``), its second phase's snapshots, with
  ``--rows 16 --group-size 8 --window 10 --beam 1 --per-row`` at T 0.9: step 600 (loss ~0.13) WER 0.580,
  spread on 15 of 16 rows, mean sd 0.217, best of 8 0.230; step 900 (~0.065) 0.354, 9/16, 0.120, 0.280; step
  1200 (~0.025) 0.287, 3/16, 0.019, 0.280. Step 600 at T 0.7: 0.441, 10/16, 0.138, 0.295. The test's
  measurement (the defaults: 8 × 2, beam 5, 30 s), seeds 0-3: step 600 at T 0.9 0.392 0.310 0.527 0.462
  (0.423), at T 0.7 0.376 0.334 0.350 0.437 (0.374); step 900 at T 0.9 0.232 0.234 0.203 0.395 (0.266).
  Step 600 is the committed lab-llasa since (``lab.toml`` at T 0.7; the README).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    from lab import corpus
    from lab.report import LabSystem, summarize, whisper
    from llasa_grpo import recipe
    from reward.normalize import error_rate

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=recipe.LAB_MODEL, help="lab-llasa or a model folder")
    p.add_argument("--codec", default=recipe.LAB_CODEC, help="lab-xcodec2 or a codec folder")
    p.add_argument("--data", type=Path, default=REPO / "data" / "lab_train.jsonl")
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--group-size", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--temperature", type=float, default=None, help="default: lab.toml's")
    p.add_argument("--window", type=float, default=30.0, help="Whisper's window in seconds (the test's: 30)")
    p.add_argument("--beam", type=int, default=5, help="Whisper's beam (the test's: 5; the reward's: 1)")
    p.add_argument("--build", type=Path, default=REPO / "runs" / "lab-build", help="for --onset / --nll")
    p.add_argument("--onset", type=int, default=0, help="append the first K true codes to each prompt")
    p.add_argument("--nll", action="store_true", help="teacher-forced NLL per utterance of the rows' texts")
    p.add_argument("--per-row", action="store_true", help="each row's capped WER per sample (GRPO's spread)")
    args = p.parse_args(argv)

    cfg = recipe.load(REPO / "lab.toml")
    temperature = cfg.generation.temperature if args.temperature is None else args.temperature
    system = LabSystem.load(
        recipe.resolve_asset(args.model),
        recipe.resolve_asset(args.codec),
        whisper(beam_size=args.beam, window_s=args.window),
    )
    texts = [json.loads(line)["text"] for line in args.data.read_text().splitlines()[: args.rows]]
    rows = [{"text": t} for t in texts]
    prompts = system.prompt_ids(rows)
    if args.onset or args.nll:
        utts = [u for u in corpus.read_manifest(args.build / "corpus") if u.lm and u.split == "train"]
        codes = dict(np.load(args.build / "codes.npz"))
        own = {t: [u for u in utts if u.text == t] for t in texts}
        missing = [t for t, us in own.items() if not us]
        if missing:
            raise SystemExit(f"--build {args.build}: no LM utterance of {missing[:2]} (another build's data?)")
    if args.nll:
        for t, p_ids in zip(texts, prompts, strict=True):
            for u in own[t]:
                target = [*system.vocab.codes_to_ids(codes[u.id]).tolist(), system.vocab.stop_id]
                ids = torch.tensor([p_ids + target])
                with torch.no_grad():
                    logp = torch.log_softmax(system.model(ids).logits[0, len(p_ids) - 1 : -1].float(), -1)
                nll = -logp[torch.arange(len(target)), torch.tensor(target)]
                top = torch.topk(nll, 3)
                worst = ", ".join(
                    f"{v:.2f}@{i}" for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
                )
                print(f"{u.speaker} {t[:44]:44s} NLL mean {nll.mean():.3f}, largest {worst}")
    if args.onset:
        onsets = [system.vocab.codes_to_ids(codes[own[t][0].id][: args.onset]).tolist() for t in texts]
        prompts = [ids + onset for ids, onset in zip(prompts, onsets, strict=True)]
    means = []
    for seed in args.seeds:
        out = system.speak(
            rows,
            temperature=temperature,
            group_size=args.group_size,
            max_new_tokens=cfg.generation.max_new_tokens,
            seed=seed,
            prompts=prompts,
        )
        stats = summarize(out)
        means.append(stats["wer_mean"])
        if args.per_row:
            g, sds, bests = args.group_size, [], []
            for i, t in enumerate(texts):
                capped = [min(1.0, error_rate(t, r.transcript.text, "en")) for r in out[g * i : g * (i + 1)]]
                sds.append(float(np.std(capped)))
                bests.append(min(capped))
                print(f"{i:3d} {t[:40]:40s} mean {np.mean(capped):.2f} sd {sds[-1]:.2f}  "
                      + " ".join(f"{w:.2f}" for w in capped))  # fmt: skip
            # GRPO's room: a row without spread gives no advantage; best-of-g is what sharpening can reach
            print(f"rows with spread {sum(sd > 0 for sd in sds)}/{len(sds)}, mean sd {np.mean(sds):.3f}, "
                  f"best of {g} {np.mean(bests):.3f}")  # fmt: skip
        print(f"seed {seed}: {stats}", flush=True)
    print(f"WER mean over seeds {args.seeds}: {np.mean(means):.3f} (T {temperature}, onset {args.onset} codes)")


if __name__ == "__main__":
    main()
