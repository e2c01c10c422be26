import math

import pytest
import torch

from grpo.loss import grpo_loss, loss_normalizer

L_MAX = 8  # the length budget for Dr. GRPO's constant normaliser


def ragged_mask(lengths, width):
    return (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).float()


def aggregation_weights(mask, aggregation):
    """∂loss/∂l_{i,t} for each aggregation, written out by hand."""
    b = mask.shape[0]
    if aggregation == "token":
        return mask / mask.sum()
    if aggregation == "sequence":
        return mask / (mask.sum(dim=1, keepdim=True) * b)
    return mask / (b * L_MAX)


@pytest.mark.parametrize("aggregation", ["token", "sequence", "constant"])
def test_on_policy_gradient_is_the_policy_gradient(aggregation):
    # With old = logps (ρ = 1) the loss gradient is −Σ_{i,t} w_{i,t} Â_i ∇log π(o_{i,t}).
    torch.manual_seed(0)
    mask = ragged_mask([6, 3, 1, 4], width=6)
    logps = (torch.randn(4, 6) - 2).requires_grad_()
    adv = torch.tensor([1.5, -0.5, 2.0, -1.0])
    loss, _ = grpo_loss(logps, logps.detach(), adv, mask, aggregation=aggregation, max_completion_length=L_MAX)
    loss.backward()
    w = aggregation_weights(mask, aggregation)
    torch.testing.assert_close(logps.grad, -adv[:, None] * w)
    torch.testing.assert_close(loss.detach(), -(adv[:, None] * w).sum())


def test_clipping_stops_the_gradient_on_the_clipped_side_only():
    # One token per sequence; eps_low=0.2, eps_high=0.28 so the range is [0.8, 1.28].
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])
    rho = torch.tensor([1.30, 1.25, 0.50, 0.75, 0.85, 1.50])
    logps = torch.zeros(6, 1, requires_grad=True)
    old = -rho.log()[:, None]  # so that exp(logps − old) = ρ
    loss, stats = grpo_loss(logps, old, adv, torch.ones(6, 1), eps_low=0.2, eps_high=0.28)
    loss.backward()
    # ∂(−ρÂ)/∂logp = −ρÂ where the unclipped term is the min; 0 where the clipped (constant) term is.
    expected = torch.tensor([0.0, -1.25, -0.50, 0.0, 0.85, 1.50]) / 6
    torch.testing.assert_close(logps.grad[:, 0], expected)
    per_token = [-1.28, -1.25, -0.50, 0.80, 0.85, 1.50]  # −min(ρÂ, clip(ρ)Â)
    torch.testing.assert_close(loss.detach(), torch.tensor(sum(per_token) / 6))
    assert stats["clip_high_frac"].item() == pytest.approx(1 / 6)
    assert stats["clip_low_frac"].item() == pytest.approx(1 / 6)
    assert stats["clip_frac"].item() == pytest.approx(2 / 6)
    assert stats["ratio_mean"].item() == pytest.approx(rho.mean().item())


def test_kl_is_zero_with_zero_gradient_when_policy_equals_reference():
    torch.manual_seed(1)
    mask = ragged_mask([5, 2, 4], width=5)
    logps = torch.randn(3, 5).requires_grad_()
    adv = torch.tensor([1.0, -2.0, 0.5])
    without, _ = grpo_loss(logps, logps.detach(), adv, mask)
    (g_without,) = torch.autograd.grad(without, logps)
    with_kl, stats = grpo_loss(logps, logps.detach(), adv, mask, ref_logps=logps.detach(), beta=0.5)
    (g_with,) = torch.autograd.grad(with_kl, logps)
    assert stats["kl_mean"].item() == 0.0
    torch.testing.assert_close(with_kl, without)
    torch.testing.assert_close(g_with, g_without)


def test_kl_term_is_the_k3_estimator():
    # π = 0.5, π_ref = 0.25: k3 = 0.5 − log 0.5 − 1; ∂k3/∂log π = 1 − π_ref/π = 0.5.
    logps = torch.tensor([[math.log(0.5)]], requires_grad=True)
    ref = torch.tensor([[math.log(0.25)]])
    loss, stats = grpo_loss(logps, logps.detach(), torch.zeros(1), torch.ones(1, 1), ref_logps=ref, beta=0.1)
    loss.backward()
    k3 = 0.5 - math.log(0.5) - 1
    assert stats["kl_mean"].item() == pytest.approx(k3)
    assert loss.item() == pytest.approx(0.1 * k3)
    assert logps.grad.item() == pytest.approx(0.1 * 0.5)


@pytest.mark.parametrize("aggregation", ["token", "sequence", "constant"])
def test_gradient_accumulation_equals_the_full_batch(aggregation):
    torch.manual_seed(2)
    mask = ragged_mask([7, 2, 5, 1, 6, 3], width=7)
    logps = (torch.randn(6, 7) - 1).requires_grad_()
    old = logps.detach() + 0.3 * torch.randn(6, 7)  # off-policy enough that some tokens are clipped
    ref = logps.detach() + 0.2 * torch.randn(6, 7)
    adv = torch.randn(6)
    kw = {"ref_logps": ref, "beta": 0.04, "eps_high": 0.28, "aggregation": aggregation, "max_completion_length": 7}

    full, stats = grpo_loss(logps, old, adv, mask, **kw)
    assert stats["clip_frac"] > 0
    (g_full,) = torch.autograd.grad(full, logps)

    parts = [slice(0, 1), slice(1, 4), slice(4, 6)]  # uneven micro-batches
    normalizer = loss_normalizer([mask[p] for p in parts], aggregation, max_completion_length=7)
    micro = [
        grpo_loss(logps[p], old[p], adv[p], mask[p], **(kw | {"ref_logps": ref[p]}), normalizer=normalizer)[0]
        for p in parts
    ]
    (g_acc,) = torch.autograd.grad(sum(micro), logps)
    torch.testing.assert_close(sum(micro), full)
    torch.testing.assert_close(g_acc, g_full)

    if aggregation != "constant":  # averaging per-micro-batch means is what the normaliser exists to avoid
        naive = [grpo_loss(logps[p], old[p], adv[p], mask[p], **(kw | {"ref_logps": ref[p]}))[0] for p in parts]
        assert not torch.allclose(sum(naive) / len(parts), full)


def test_token_weights_scale_each_tokens_loss_and_gradient():
    torch.manual_seed(3)
    mask = ragged_mask([4, 2, 3], width=4)
    logps = torch.randn(3, 4).requires_grad_()
    old, ref, adv = logps.detach() + 0.1 * torch.randn(3, 4), torch.randn(3, 4), torch.randn(3)
    w = torch.rand(3, 4) * 2
    kw = {"ref_logps": ref, "beta": 0.1, "aggregation": "sequence"}
    plain, _ = grpo_loss(logps, old, adv, mask, **kw)
    weighted, _ = grpo_loss(logps, old, adv, mask, **kw, token_weights=w)
    # Per token, the weighted loss is w times the plain one: compare the gradients w.r.t. each log-prob.
    (g_plain,) = torch.autograd.grad(plain, logps)
    (g_weighted,) = torch.autograd.grad(weighted, logps)
    torch.testing.assert_close(g_weighted, w * g_plain)
    assert not torch.allclose(weighted, plain)


def test_loss_normalizer_values():
    masks = [ragged_mask([3, 1], 4), ragged_mask([4, 0, 2], 4)]
    assert loss_normalizer(masks, "token") == 10.0
    assert loss_normalizer(masks, "sequence") == 5.0
    assert loss_normalizer(masks, "constant", max_completion_length=16) == 80.0
    assert loss_normalizer(masks[0], "token") == 4.0
    assert loss_normalizer(torch.zeros(2, 3), "token") == 1.0  # an all-padding step: loss 0, not NaN


def test_bad_arguments_raise():
    x, adv, mask = torch.zeros(2, 3), torch.zeros(2), torch.ones(2, 3)
    cases = [
        ({"old_logps": torch.zeros(2, 4)}, "old_logps has shape"),
        ({"mask": torch.ones(3, 3)}, "mask has shape"),
        ({"advantages": torch.zeros(2, 1)}, r"advantages must be \[B\]"),
        ({"beta": 0.1}, "needs ref_logps"),
        ({"aggregation": "mean"}, "aggregation='mean'"),
        ({"aggregation": "constant"}, "needs max_completion_length"),
        ({"normalizer": 0.0}, "normalizer=0.0"),
        ({"token_weights": torch.ones(2)}, "token_weights has shape"),
    ]
    for override, msg in cases:
        args = {"logps": x, "old_logps": x, "advantages": adv, "mask": mask} | override
        with pytest.raises(ValueError, match=msg):
            grpo_loss(**args)
    with pytest.raises(ValueError, match="needs max_completion_length"):
        loss_normalizer(mask, "constant")
