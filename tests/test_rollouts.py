import pytest
import torch

from grpo.rollouts import Rollouts


def _rollouts(n: int, group_size: int) -> Rollouts:
    return Rollouts(
        prompt_ids=torch.zeros(n, 3, dtype=torch.long),
        prompt_mask=torch.ones(n, 3, dtype=torch.long),
        completion_ids=torch.tensor([[5, 6, 7, 0]] * n),
        completion_mask=torch.tensor([[1, 1, 0, 0]] * n),
        group_size=group_size,
        finished=torch.zeros(n, dtype=torch.bool),
    )


def test_unpadded_completions():
    r = _rollouts(6, 3)
    assert len(r) == 6
    assert r.completion_lists()[0] == [5, 6]


# group_size >= 2 is checked where the config loads (GRPOConfig) and by group_advantages, not here
@pytest.mark.parametrize(("n", "g", "msg"), [(5, 2, "multiple of group_size"), (4, 0, "multiple of group_size")])
def test_bad_group_shapes_are_named(n, g, msg):
    with pytest.raises(ValueError, match=msg):
        _rollouts(n, g)
