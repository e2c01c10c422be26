import math
import statistics

import pytest
import torch

from grpo.advantages import group_advantages, zero_spread_fraction

# Three groups of four: a 2-vs-2 split, a constant group, and [3, 1, 2, 2].
REWARDS = [1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 3.0, 1.0, 2.0, 2.0]
EPS = 1e-4


def test_group_scale_divides_by_each_groups_sample_std():
    a = group_advantages(torch.tensor(REWARDS), group_size=4, scale="group", eps=EPS)
    s1, s3 = math.sqrt(1 / 3), math.sqrt(2 / 3)  # sample std (n − 1) of groups 1 and 3, by hand
    expected = [0.5 / (s1 + EPS), -0.5 / (s1 + EPS), -0.5 / (s1 + EPS), 0.5 / (s1 + EPS)]
    expected += [0.0] * 4 + [1 / (s3 + EPS), -1 / (s3 + EPS), 0.0, 0.0]
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, torch.tensor(expected))


def test_batch_scale_centres_per_group_but_divides_by_the_batch_std():
    a = group_advantages(torch.tensor(REWARDS), group_size=4, scale="batch", eps=EPS)
    std = statistics.stdev(REWARDS)
    expected = [0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0]
    torch.testing.assert_close(a, torch.tensor([x / (std + EPS) for x in expected]))


def test_none_scale_only_subtracts_the_group_mean():
    a = group_advantages(torch.tensor(REWARDS), group_size=2, scale="none")
    # groups of two: (1,0) (0,1) (.5,.5) (.5,.5) (3,1) (2,2)
    expected = [0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0]
    torch.testing.assert_close(a, torch.tensor(expected))


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_constant_groups_give_exact_zeros_never_nan(scale):
    # In float32, 0.9 - mean(0.9, 0.9, 0.9) is 6e-8, not 0: dividing by (0 + eps) would leave noise.
    rewards = torch.tensor([0.9, 0.9, 0.9, 0.3, 0.3, 0.3])
    a = group_advantages(rewards, group_size=3, scale=scale)
    assert torch.equal(a, torch.zeros(6))


def test_zero_spread_fraction_counts_groups_within_atol():
    assert zero_spread_fraction(torch.tensor(REWARDS), group_size=4) == pytest.approx(1 / 3)
    near = torch.tensor([1.0, 1.0 + 1e-7, 0.0, 1.0])
    assert zero_spread_fraction(near, group_size=2) == 0.5
    assert zero_spread_fraction(near, group_size=2, atol=0.0) == 0.0


@pytest.mark.parametrize(
    ("rewards", "group_size", "scale", "msg"),
    [
        (torch.zeros(5), 2, "group", "not a multiple of group_size=2"),
        (torch.zeros(4), 1, "group", "at least 2"),
        (torch.zeros(2, 2), 2, "group", "1-D"),
        (torch.tensor([0.0, float("nan")]), 2, "group", "NaN"),
        (torch.zeros(4), 2, "std", "scale='std'"),
    ],
)
def test_bad_inputs_raise_clear_errors(rewards, group_size, scale, msg):
    with pytest.raises(ValueError, match=msg):
        group_advantages(rewards, group_size, scale=scale)
