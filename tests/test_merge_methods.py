"""Merge methods against exact, hand-computed answers."""

import pytest
import torch

from dtmerge.merge.methods import METHODS, average, dare, fisher, interpolate, task_arithmetic, ties


def _t(*v):
    return torch.tensor(v, dtype=torch.float32)


def test_every_method_names_its_paper():
    for name, m in METHODS.items():
        assert m.fn.__doc__ and ("20" in m.fn.__doc__), name  # a year of publication in the docstring


def test_interpolate_endpoints_are_exact():
    a, b = torch.randn(5, 3), torch.randn(5, 3)
    assert torch.equal(interpolate([a, b], alpha=0.0), a)
    assert torch.equal(interpolate([a, b], alpha=1.0), b)
    torch.testing.assert_close(interpolate([a, b], alpha=0.25), 0.75 * a + 0.25 * b)
    with pytest.raises(ValueError, match="exactly 2"):
        interpolate([a, b, a])


def test_average_of_identical_models_returns_them():
    a = torch.randn(7, 4)
    assert torch.equal(average([a, a.clone(), a.clone()]), a)
    torch.testing.assert_close(average([_t(0, 3), _t(3, 0)], weights=[2, 1]), _t(1, 2))
    with pytest.raises(ValueError, match="non-negative"):
        average([a, a], weights=[1, -1])


def test_task_arithmetic_with_one_over_n_equals_averaging():
    base = torch.randn(6)
    models = [base + torch.randn(6) for _ in range(3)]
    torch.testing.assert_close(task_arithmetic(models, base=base), average(models), rtol=0, atol=1e-6)
    torch.testing.assert_close(task_arithmetic([_t(2, 2), _t(4, 0)], base=_t(1, 1), scale=1.0), _t(5, 1))


def test_fisher_with_equal_fishers_is_averaging_and_one_hot_picks_a_model():
    models = [torch.randn(4, 4) for _ in range(3)]
    same = [torch.full((4, 4), 0.3)] * 3
    torch.testing.assert_close(fisher(models, fishers=same), average(models), rtol=0, atol=1e-6)
    onehot = [torch.zeros(4, 4), torch.ones(4, 4), torch.zeros(4, 4)]
    torch.testing.assert_close(fisher(models, fishers=onehot), models[1], rtol=0, atol=1e-6)
    # per-element: each element goes to the model with information there
    mask = torch.rand(4, 4) > 0.5
    split = [mask.float(), (~mask).float(), torch.zeros(4, 4)]
    torch.testing.assert_close(fisher(models, fishers=split), torch.where(mask, models[0], models[1]),
                               rtol=0, atol=1e-6)
    # normalisers rescale a model's Fisher: F=[1, 2] with normalisers [1, 4] -> weights [1, 0.5]
    torch.testing.assert_close(fisher([_t(0.0), _t(3.0)], fishers=[_t(1.0), _t(2.0)], normalizers=[1, 4]),
                               _t(1.0))
    # no information anywhere: the floor gives the plain mean, never a division by zero
    zero = [torch.zeros(2)] * 2
    torch.testing.assert_close(fisher([_t(1, 2), _t(3, 6)], fishers=zero), _t(2, 4))


def test_ties_on_hand_built_vectors():
    base = torch.zeros(4)
    t1, t2, t3 = _t(1.0, -2.0, 0.5, 3.0), _t(2.0, 1.0, -0.1, -1.0), _t(-4.0, 1.5, 0.3, -1.0)
    # density 1 (no trimming): elected signs = sign of sums = [-, +, +, +]
    # element 0: sum -1 -> '-' : only t3 agrees -> -4
    # element 1: sum 0.5 -> '+': t2, t3 agree -> (1 + 1.5) / 2 = 1.25
    # element 2: sum 0.7 -> '+': t1, t3 -> (0.5 + 0.3) / 2 = 0.4
    # element 3: sum 1.0 -> '+': t1 -> 3
    torch.testing.assert_close(ties([t1, t2, t3], base=base, density=1.0), _t(-4.0, 1.25, 0.4, 3.0))
    # density 0.5 keeps the 2 largest magnitudes of each: t1 -> [0,-2,0,3], t2 -> [2,1,0,0], t3 -> [-4,1.5,0,0]
    # sums [-2, 0.5, 0, 3] -> signs [-, +, 0, +]; element 2 has no agreeing entry -> 0
    torch.testing.assert_close(ties([t1, t2, t3], base=base, density=0.5), _t(-4.0, 1.25, 0.0, 3.0))
    torch.testing.assert_close(ties([t1 + 1, t2 + 1, t3 + 1], base=base + 1, density=1.0, scale=0.5),
                               _t(-1.0, 1.625, 1.2, 2.5))


def test_dare_on_hand_built_vectors():
    base = _t(1.0, 1.0, 1.0, 1.0)
    t1, t2 = _t(3.0, 1.0, 0.0, 2.0), _t(1.0, 5.0, 1.0, 0.0)
    torch.testing.assert_close(dare([t1, t2], base=base, density=1.0), task_arithmetic([t1, t2], base=base))
    g = torch.Generator().manual_seed(3)
    keep1, keep2 = torch.rand(4, generator=g) < 0.5, torch.rand(4, generator=g) < 0.5
    expected = base + 0.5 * (torch.where(keep1, (t1 - base) / 0.5, 0) + torch.where(keep2, (t2 - base) / 0.5, 0))
    torch.testing.assert_close(dare([t1, t2], base=base, density=0.5, generator=torch.Generator().manual_seed(3)),
                               expected)
