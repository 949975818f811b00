"""Per-seed dropout streams: slice s of a seed-batched tensor gets exactly the mask its own run would draw."""

from __future__ import annotations

import pytest
import torch

from flowrl.layers import Dropout
from flowrl.layers.dropout import dropout


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["f32", "f64", "bf16"])
def test_each_seed_slice_draws_its_own_runs_mask_forward_and_backward(kernel, dtype):
    seeds, B = (3, 11, 0), 4
    x = torch.randn(len(seeds) * B, 6, 8, dtype=dtype, requires_grad=True)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    outs = [dropout(x, 0.3, generators=gens) for _ in range(2)]  # two calls: the streams advance per seed
    sum(o.float().sum() for o in outs).backward()
    for k, seed in enumerate(seeds):
        part = x.detach()[k * B : (k + 1) * B].clone().requires_grad_()
        torch.manual_seed(seed)  # what a single run of this seed does before training
        alone = [dropout(part, 0.3) for _ in range(2)]
        sum(o.float().sum() for o in alone).backward()
        for o, a in zip(outs, alone):
            assert torch.equal(o[k * B : (k + 1) * B], a)
        assert torch.equal(x.grad[k * B : (k + 1) * B], part.grad)
    # the generators moved on as the default generator does in a single run
    torch.manual_seed(seeds[1])
    dropout(x[:B], 0.3), dropout(x[:B], 0.3)
    assert torch.equal(gens[1].get_state(), torch.get_rng_state())


def test_the_module_uses_its_generators_and_checks_the_split():
    drop = Dropout(0.5)
    x = torch.randn(6, 10)
    drop.generators = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    y = drop(x)
    torch.manual_seed(2)
    assert torch.equal(y[3:], dropout(x[3:], 0.5))
    drop.generators = [torch.Generator() for _ in range(4)]
    with pytest.raises(ValueError, match="4 generators do not split a first dimension of 6"):
        drop(x)
    assert torch.equal(drop.eval()(x), x)  # no draws in eval mode
