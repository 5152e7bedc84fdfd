"""Merge methods against exact, hand-computed answers."""

import math
from pathlib import Path

import pytest
import torch

from dtmerge.merge.methods import (
    METHODS,
    average,
    breadcrumbs,
    dare,
    della,
    della_keep_probabilities,
    fisher,
    interpolate,
    iso_c,
    karcher,
    model_stock,
    ram,
    slerp,
    task_arithmetic,
    ties,
    tsv,
)


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


def test_slerp_on_hand_built_vectors():
    a, b = _t(2.0, 0.0), _t(0.0, 2.0)
    r = math.sqrt(2.0)
    torch.testing.assert_close(slerp([a, b], t=0.5), _t(r, r))  # on the arc, not the chord's (1, 1)
    torch.testing.assert_close(slerp([a, b], t=0.0), a)
    torch.testing.assert_close(slerp([a, b], t=1.0), b)
    # 60 degrees apart, t = 1/2: sin(30)/sin(60) of each
    c = _t(1.0, math.sqrt(3.0)) / 2 * 2
    w = math.sin(math.pi / 6) / math.sin(math.pi / 3)
    torch.testing.assert_close(slerp([a, c], t=0.5), w * a + w * c)
    torch.testing.assert_close(slerp([a, a * 3], t=0.25), a * 1.5)  # parallel: linear
    with pytest.raises(ValueError, match="exactly 2"):
        slerp([a, b, a])


def test_karcher_mean_on_hand_built_vectors():
    r = math.sqrt(2.0)
    torch.testing.assert_close(karcher([_t(1.0, 0.0), _t(0.0, 1.0)]), _t(1 / r, 1 / r))
    torch.testing.assert_close(karcher([_t(2.0, 0.0), _t(0.0, 2.0)]), slerp([_t(2.0, 0.0), _t(0.0, 2.0)]))
    x = torch.randn(3, 4)
    torch.testing.assert_close(karcher([x, x.clone(), x.clone()]), x)
    # three unit vectors of an orthant: the mean direction is (1, 1, 1) / sqrt 3 by symmetry
    e = torch.eye(3)
    torch.testing.assert_close(karcher([e[0], e[1], e[2]], max_iter=50, tol=1e-10), torch.ones(3) / math.sqrt(3),
                               rtol=0, atol=1e-6)


def test_breadcrumbs_drops_outliers_and_the_smallest():
    base = torch.zeros(10)
    d = _t(5.0, -4.0, 3.0, 0.1, 2.0, -1.0, 0.5, 0.2, -0.3, 0.05)
    # gamma 0.1: the largest (5) goes; density 0.5: the next five (-4, 3, 2, -1, 0.5) stay; the rest goes
    torch.testing.assert_close(breadcrumbs([d], base=base, density=0.5, gamma=0.1, scale=1.0),
                               _t(0.0, -4.0, 3.0, 0.0, 2.0, -1.0, 0.5, 0.0, 0.0, 0.0))
    models = [base + torch.randn(10) for _ in range(3)]
    torch.testing.assert_close(breadcrumbs(models, base=base, density=1.0, gamma=0.0), task_arithmetic(models, base))
    with pytest.raises(ValueError, match="density \\+ gamma"):
        breadcrumbs(models, base=base, density=0.9, gamma=0.2)


def test_della_keep_probabilities_rise_with_magnitude_and_density_one_is_ties():
    p = della_keep_probabilities(_t(1.0, -3.0, 2.0), density=0.5, epsilon=0.2)
    torch.testing.assert_close(p, _t(0.3, 0.7, 0.5))  # ranks 0, 2, 1 of 2
    rows = della_keep_probabilities(torch.tensor([[1.0, -3.0, 2.0], [9.0, 8.0, 7.0]]), density=0.5, epsilon=0.2)
    torch.testing.assert_close(rows, torch.tensor([[0.3, 0.7, 0.5], [0.7, 0.5, 0.3]]))  # ranked within each row
    base = torch.zeros(4)
    t1, t2, t3 = _t(1.0, -2.0, 0.5, 3.0), _t(2.0, 1.0, -0.1, -1.0), _t(-4.0, 1.5, 0.3, -1.0)
    torch.testing.assert_close(della([t1, t2, t3], base=base, density=1.0, epsilon=0.0),
                               ties([t1, t2, t3], base=base, density=1.0))
    a = della([t1, t2, t3], base=base, seed=3)
    assert torch.equal(a, della([t1, t2, t3], base=base, seed=3))  # seeded
    with pytest.raises(ValueError, match="della needs"):
        della([t1, t2], base=base, density=0.9, epsilon=0.2)


def test_model_stock_interpolates_by_the_angle_between_task_vectors():
    base = _t(1.0, 1.0)
    # orthogonal task vectors: t = 0, the base
    torch.testing.assert_close(model_stock([base + _t(1.0, 0.0), base + _t(0.0, 1.0)], base=base), base)
    # parallel ones: t = 1, the average
    torch.testing.assert_close(model_stock([base + _t(1.0, 2.0), base + _t(2.0, 4.0)], base=base), _t(2.5, 4.0))
    # 60 degrees (cos 1/2), N = 2: t = 2 * 0.5 / (1 + 0.5) = 2/3 of the way to the average
    d1, d2 = _t(1.0, 0.0), _t(0.5, math.sqrt(3.0) / 2)
    torch.testing.assert_close(model_stock([base + d1, base + d2], base=base), base + 2 / 3 * (d1 + d2) / 2)


def test_tsv_keeps_decorrelated_task_subspaces_exactly():
    base = torch.zeros(4, 4)
    # rank 2 each (k = 4 / 2), in orthogonal row and column spaces: nothing to decorrelate
    d1 = torch.zeros(4, 4)
    d1[:2, :2] = torch.tensor([[3.0, 1.0], [0.5, 2.0]])
    d2 = torch.zeros(4, 4)
    d2[2:, 2:] = torch.tensor([[-1.0, 2.0], [1.5, 0.5]])
    torch.testing.assert_close(tsv([base + d1, base + d2], base=base), d1 + d2, rtol=0, atol=1e-6)
    torch.testing.assert_close(tsv([_t(1.0, 2.0), _t(3.0, 4.0)], base=_t(1.0, 1.0)), _t(2.0, 3.0))  # 1-D: the mean


def test_iso_c_flattens_the_spectrum_of_the_summed_task_vector():
    base = torch.zeros(2, 2)
    total = torch.diag(_t(3.0, 1.0))
    torch.testing.assert_close(iso_c([total / 2, total / 2], base=base), 2 * torch.eye(2), rtol=0, atol=1e-6)
    torch.testing.assert_close(iso_c([_t(1.0, 2.0), _t(3.0, 4.0)], base=_t(0.0, 0.0)), _t(2.0, 3.0))  # 1-D: the mean
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))  # a rotation keeps the spectrum
    m = (q @ torch.diag(torch.tensor([4.0, 2.0, 0.0], dtype=torch.float64)) @ q.T).float()
    out = iso_c([m], base=torch.zeros(3, 3))
    torch.testing.assert_close(torch.linalg.svdvals(out.double()), torch.full((3,), 2.0, dtype=torch.float64),
                               rtol=0, atol=1e-5)


def test_ram_keeps_unique_updates_whole_and_averages_shared_ones():
    base = torch.zeros(4)
    d1, d2 = _t(1.0, 0.0, 2.0, 0.0), _t(0.0, 3.0, 4.0, 0.0)
    torch.testing.assert_close(ram([d1, d2], base=base), _t(1.0, 3.0, 3.0, 0.0))  # averaging: 0.5, 1.5, 3, 0
    torch.testing.assert_close(ram([d1, d2], base=base, unique_scale=2.0), _t(2.0, 6.0, 3.0, 0.0))
    torch.testing.assert_close(ram([d1, d2], base=base, threshold=1.5), _t(0.0, 3.0, 3.0, 0.0))
    # density 0.25 keeps each model's largest entry only: d1's 2.0 and d2's 4.0 (shared), so 3.0
    torch.testing.assert_close(ram([d1, d2], base=base, density=0.25), _t(0.0, 0.0, 3.0, 0.0))
    # density 0.5: d1 keeps 2.0 and 1.0, d2 keeps 4.0 and 3.0; entries 0 and 1 are unique
    torch.testing.assert_close(ram([d1, d2], base=base, density=0.5, unique_scale=0.5), _t(0.5, 1.5, 3.0, 0.0))


def _load_plugin(tmp_path, monkeypatch):
    """The merging guide's plugin example, loaded as an installed package's entry point would be."""
    import sys
    from importlib.metadata import EntryPoint

    from dtmerge.merge import methods

    (tmp_path / "my_merges.py").write_text(PLUGIN_EXAMPLE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_merges", raising=False)  # imported afresh, so it registers again
    monkeypatch.setattr(methods, "_plugins_loaded", False)
    monkeypatch.setattr(methods, "entry_points", lambda group: [
        EntryPoint(name="my_merges", value="my_merges", group=group)] if group == methods.PLUGIN_GROUP else [])
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))
    return methods.available()


def test_a_package_registers_its_own_method_through_an_entry_point(tmp_path, monkeypatch):
    m = _load_plugin(tmp_path, monkeypatch)["elementwise_max"]
    torch.testing.assert_close(m.fn([_t(1.0, 5.0), _t(3.0, 2.0)]), _t(3.0, 5.0))


def test_a_method_from_another_package_runs_in_dtmerge_merge(tmp_path, monkeypatch, task_models):
    from click.testing import CliRunner
    from safetensors.torch import load_file

    from dtmerge.cli import main

    _load_plugin(tmp_path, monkeypatch)
    hopper, walker = task_models["hopper"], task_models["walker2d"]
    r = CliRunner().invoke(main, ["merge", "--model", str(hopper), "--model", str(walker), "--method",
                                  "elementwise_max", "--output", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    a, b = load_file(hopper / "model.safetensors"), load_file(walker / "model.safetensors")
    name = "transformer.h.0.attn.c_attn.weight"
    torch.testing.assert_close(load_file(tmp_path / "m" / "shared.safetensors")[name], torch.maximum(a[name], b[name]))


def _guide_plugin_example() -> str:
    """The plugin example exactly as the merging guide shows it."""
    guide = (Path(__file__).parent.parent / "docs" / "merging.md").read_text()
    block = next(b for b in guide.split("```python")[1:] if "elementwise_max" in b)
    return block.split("```")[0]


PLUGIN_EXAMPLE = _guide_plugin_example()


def test_regmean_is_the_least_squares_merge():
    from dtmerge.merge.methods import regmean

    # one input dimension: weights 4 and 1 on the two models' weights 1 and 6
    torch.testing.assert_close(regmean([_t(1.0)[None], _t(6.0)[None]], grams=[torch.tensor([[4.0]]),
                                                                              torch.tensor([[1.0]])]),
                               torch.tensor([[2.0]]))
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(50, 4, generator=g, dtype=torch.float64), torch.randn(30, 4, generator=g, dtype=torch.float64)
    w1, w2 = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    merged = regmean([w1, w2], grams=[x1.T @ x1, x2.T @ x2], alpha=1.0)
    # the weight whose outputs best match each model's own outputs on its own inputs
    best = torch.linalg.lstsq(torch.cat([x1, x2]), torch.cat([x1 @ w1, x2 @ w2])).solution
    torch.testing.assert_close(merged, best)
    same = torch.eye(4, dtype=torch.float64) * 2
    torch.testing.assert_close(regmean([w1, w2], grams=[same, same]), (w1 + w2) / 2)
    torch.testing.assert_close(regmean([_t(1.0, 3.0), _t(3.0, 5.0)], grams=[None, None]), _t(2.0, 4.0))  # biases
