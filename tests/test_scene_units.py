"""CLIPascene building blocks: the two MLPs, Gumbel keep-probabilities, f_k ratios, sparsity/ratio losses."""

import math

import numpy as np
import pytest
import torch

from clipasso_pl.errors import ClipassoError
from clipasso_pl.scene import losses as scene_losses
from clipasso_pl.scene.mlp import LocationMLP, WidthMLP, keep_probabilities, seeded
from clipasso_pl.scene.ratios import fit_exponential, halving_points, simplicity_ratios, step_size


def test_location_mlp_shapes_match_the_paper():
    mlp = LocationMLP(num_strokes=64)
    linears = [m for m in mlp.net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 1000), (1000, 1000), (1000, 512)]
    assert [type(m).__name__ for m in mlp.net] == ["Linear", "SELU", "Linear", "SELU", "Linear"]
    assert mlp(torch.rand(512)).shape == (512,)
    assert mlp(torch.rand(3, 512)).shape == (3, 512)


def test_location_mlp_is_x_plus_a_tenth_of_the_offset():
    torch.manual_seed(0)
    mlp = LocationMLP(num_strokes=4, hidden=16)
    x = torch.rand(2, 32)
    assert torch.allclose(mlp(x), x + 0.1 * mlp.net(x), atol=1e-7)
    # With the last layer zeroed the MLP is the identity: the first sketch is the initialisation.
    with torch.no_grad():
        mlp.net[-1].weight.zero_()
        mlp.net[-1].bias.zero_()
    assert torch.equal(mlp(x), x)


def test_width_mlp_shapes_and_sigmoid_range():
    mlp = WidthMLP(num_strokes=64)
    linears = [m for m in mlp.net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 1000), (1000, 1000), (1000, 64)]
    assert sum(isinstance(m, torch.nn.SELU) for m in mlp.net) == 2
    q = mlp(torch.ones(64))
    assert q.shape == (64,) and torch.all((q > 0) & (q < 1))
    assert torch.allclose(q, torch.sigmoid(mlp.net(torch.ones(64))))


def test_seeded_modules_repeat_and_leave_global_rng_alone():
    state = torch.random.get_rng_state()
    a = seeded(lambda: WidthMLP(8, 16), 3)
    b = seeded(lambda: WidthMLP(8, 16), 3)
    c = seeded(lambda: WidthMLP(8, 16), 4)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.net[0].weight, b.net[0].weight)
    assert not torch.equal(a.net[0].weight, c.net[0].weight)


def test_gumbel_keep_probabilities_in_unit_interval_and_differentiable():
    q = torch.tensor([0.01, 0.2, 0.5, 0.8, 0.99], requires_grad=True)
    g = torch.Generator().manual_seed(0)
    p = keep_probabilities(q, temperature=0.2, generator=g)
    assert p.shape == q.shape and torch.all((p >= 0) & (p <= 1))
    p.sum().backward()
    assert q.grad is not None and torch.all(torch.isfinite(q.grad)) and q.grad.abs().sum() > 0
    # Same generator seed, same draw; noiseless version is the tempered Bernoulli probability.
    again = keep_probabilities(q.detach(), 0.2, torch.Generator().manual_seed(0))
    assert torch.allclose(again, p.detach())
    plain = keep_probabilities(q.detach(), 0.2, noise=False)
    qd = q.detach()
    expected = qd ** 5 / (qd ** 5 + (1 - qd) ** 5)
    assert torch.allclose(plain, expected, atol=1e-5)


def test_gumbel_gradient_matches_finite_differences():
    q = torch.tensor([0.3, 0.6, 0.45], dtype=torch.float64, requires_grad=True)
    noise_seed = 7

    def f(v):
        return keep_probabilities(v, 0.2, torch.Generator().manual_seed(noise_seed)).pow(2).sum()

    f(q).backward()
    eps = 1e-6
    for i in range(3):
        d = torch.zeros(3, dtype=torch.float64)
        d[i] = eps
        fd = (f(q.detach() + d) - f(q.detach() - d)) / (2 * eps)
        assert float(q.grad[i]) == pytest.approx(float(fd), rel=1e-3, abs=1e-6)


def test_gumbel_frequency_of_keeping_follows_q():
    q = torch.full((20000,), 0.3)
    p = keep_probabilities(q, 0.2, torch.Generator().manual_seed(1))
    assert float((p > 0.5).float().mean()) == pytest.approx(0.3, abs=0.02)


def test_fit_exponential_recovers_a_known_curve():
    a, c = 2.5, -0.7
    xs = [1, 2, 3, 4, 5]
    ys = [a * math.exp(c * x) for x in xs]
    fa, fc = fit_exponential(xs, ys)
    assert fa == pytest.approx(a, rel=1e-9) and fc == pytest.approx(c, rel=1e-9)


def test_ratios_halve_from_one_over_the_fidelity_loss():
    xs, ys = halving_points(4.0, 4)
    assert xs == [1, 2, 3, 4, 5] and ys == [4.0, 2.0, 1.0, 0.5, 0.25]
    loss = 0.8
    r = simplicity_ratios(loss, levels=8, step=0.5)
    assert len(r) == 8
    assert r[0] == pytest.approx(1 / loss, rel=1e-9)  # x = 1 is r_1 exactly (halving is exactly exponential)
    # f(x) = r1 * 2^-(x-1): level k sits at x = 1 + k * step
    assert np.allclose(r, [(1 / loss) * 2 ** (-k * 0.5) for k in range(8)], rtol=1e-9)
    assert all(b < a for a, b in zip(r, r[1:]))
    with pytest.raises(ClipassoError):
        simplicity_ratios(float("nan"), 8, 0.5)


def test_step_sizes_per_layer_and_part():
    fg = ([2, 8, 11], [0.4, 0.5, 0.9])
    bg = ([2, 8, 11], [0.35, 0.5, 0.85])
    assert [step_size(l, *fg) for l in (2, 8, 11)] == [0.4, 0.5, 0.9]
    assert [step_size(l, *bg) for l in (2, 8, 11)] == [0.35, 0.5, 0.85]
    assert step_size(5, *fg) == pytest.approx(0.45)  # interpolated between configured layers
    with pytest.raises(ClipassoError):
        step_size(2, [2, 8], [0.4])


def test_sparsity_counts_only_strokes_inside_the_canvas():
    points = torch.zeros(1, 3, 4, 2)
    points[0, 0] = 10.0  # inside a 32 x 32 canvas
    points[0, 1] = 20.0
    points[0, 2] = -50.0  # outside
    inside = scene_losses.inside_canvas(points, 32, 32)
    assert inside.tolist() == [[True, True, False]]
    keep = torch.tensor([[1.0, 0.5, 1.0]], requires_grad=True)
    s = scene_losses.sparsity_loss(keep, inside)
    assert float(s.detach()) == pytest.approx(0.75)
    r = scene_losses.ratio_loss(s, torch.tensor([0.5]), ratio=1.0)
    assert float(r.detach()) == pytest.approx(0.0625)
    r.sum().backward()
    assert keep.grad[0, 2] == 0 and keep.grad[0, 0] != 0


# ------------------------------------------------------------ official formulas, hand-computed
def test_location_mapping_moves_a_point_by_five_hundredths_of_the_side_per_unit():
    # Inputs in [-1, 1] (2p/W - 1), output 0.5 (y + 1) W with y = x + 0.1 MLP(x):
    # an MLP output of exactly 1.0 moves every coordinate by 0.5 * 0.1 * W = 0.05 W.
    from clipasso_pl.scene.mlp import from_unit, to_unit

    W = 224.0
    p = torch.tensor([[10.0, 200.0], [112.0, 0.0]])
    x = to_unit(p, W)
    assert torch.allclose(x, torch.tensor([[10 / 112 - 1, 200 / 112 - 1], [0.0, -1.0]]))
    mlp = LocationMLP(num_strokes=1, hidden=4)
    with torch.no_grad():
        mlp.net[-1].weight.zero_()
        mlp.net[-1].bias.fill_(1.0)
    flat = torch.rand(8) * W  # one stroke: 4 points x (x, y)
    shift = from_unit(mlp(to_unit(flat, W)), W) - flat
    assert torch.allclose(shift, torch.full((8,), 0.05 * W), atol=1e-4)  # 11.2 px on a 224 canvas


def test_width_mlp_official_init_and_its_initial_keep_probabilities():
    mlp = seeded(lambda: WidthMLP(64, 1000), 0)
    linears = [m for m in mlp.net if isinstance(m, torch.nn.Linear)]
    for m in linears:
        bound = math.sqrt(6.0 / (m.in_features + m.out_features))  # Xavier-uniform
        assert torch.all(m.bias.detach() == 0.01) and float(m.weight.detach().abs().max()) <= bound
        assert float(m.weight.abs().max()) > 0.95 * bound
    with torch.no_grad():
        q = mlp(torch.full((64,), 1.5))  # the official input: ones x 1.5
    # Seed 0: pinned; torch's default init gives a much narrower spread (0.500 +- 0.086).
    assert float(q.mean()) == pytest.approx(0.47110, abs=1e-4)
    assert float(q.std()) == pytest.approx(0.16047, abs=1e-4)
    default = seeded(lambda: WidthMLP(64, 1000, init=False), 0)
    with torch.no_grad():
        assert float(default(torch.full((64,), 1.5)).std()) == pytest.approx(0.08575, abs=1e-4)


def _linear_losses(coeffs, params):
    """Loss i = sum over params of coeffs[i] * p: |dL_i/dp| = coeffs[i] on every element."""
    return sum(coeffs * p.sum() for p in params)


def test_gradnorm_weights_on_synthetic_losses_with_known_gradients():
    # Seed 0: mean |grad| of the three losses = 2, 6, 4 -> G = 12, n = 3:
    # w = (G - g) / ((n - 1) G) = 10/24, 6/24, 8/24.  Seed 1: g = 1, 1, 2 -> G = 4: 3/8, 3/8, 2/8.
    seed0 = [torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)]
    seed1 = [torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)]
    losses = {
        "a": torch.stack([_linear_losses(2.0, seed0), _linear_losses(1.0, seed1)]),
        "b": torch.stack([_linear_losses(-6.0, seed0), _linear_losses(1.0, seed1)]),
        "c": torch.stack([_linear_losses(4.0, seed0), _linear_losses(2.0, seed1)]),
    }
    w = scene_losses.gradnorm_weights(losses, [seed0, seed1])
    assert torch.allclose(w["a"], torch.tensor([10 / 24, 3 / 8]))
    assert torch.allclose(w["b"], torch.tensor([6 / 24, 3 / 8]))
    assert torch.allclose(w["c"], torch.tensor([8 / 24, 2 / 8]))
    # Two losses: g = 1 and 3 -> weights 3/4 and 1/4 (the harder pull gets the smaller weight).
    p = [torch.zeros(4, requires_grad=True)]
    two = scene_losses.gradnorm_weights({"x": (1.0 * p[0].sum())[None], "y": (3.0 * p[0].sum())[None]}, [p])
    assert float(two["x"]) == pytest.approx(0.75) and float(two["y"]) == pytest.approx(0.25)
    # A parameter a loss does not reach is left out of that loss's mean (official: grad is None).
    q = [torch.zeros(2, requires_grad=True), torch.zeros(6, requires_grad=True)]
    g = scene_losses.mean_abs_grad((5.0 * q[0].sum()), [q])
    assert float(g[0]) == pytest.approx(5.0)


def test_zscore_selection_per_seed_on_a_made_up_eval_table():
    from clipasso_pl.scene.selection import SceneRecord, select_zscore, zscore_table

    steps = [100, 200, 300, 400]
    block = [[4.0, 1.0], [3.0, 2.0], [2.0, 3.0], [3.0, 4.0]]  # [eval, seed]
    sparsity = [[1.0, 4.0], [1.0, 4.0], [2.0, 4.0], [0.0, 1.0]]
    records = [SceneRecord(s, {"conv/block2": torch.tensor(b), "sparsity": torch.tensor(sp)},
                           torch.zeros(2, 1, 4, 2), torch.ones(2, 1)) for s, b, sp in zip(steps, block, sparsity)]
    table = zscore_table(records, ["conv/block2", "sparsity"])
    r2 = math.sqrt(2)
    # Seed 0: block z = (+r2, 0, -r2, 0), sparsity z = (0, 0, +r2, -r2) -> sums (r2, 0, 0, -r2).
    assert torch.allclose(table[:, 0], torch.tensor([r2, 0, 0, -r2], dtype=torch.float64), atol=1e-9)
    # Seed 1: block z = (-3, -1, 1, 3)/sqrt(5); sparsity z = (1, 1, 1, -3)/sqrt(3).
    expect1 = [-3 / math.sqrt(5) + 1 / math.sqrt(3), -1 / math.sqrt(5) + 1 / math.sqrt(3),
               1 / math.sqrt(5) + 1 / math.sqrt(3), 3 / math.sqrt(5) - 3 / math.sqrt(3)]
    assert torch.allclose(table[:, 1], torch.tensor(expect1, dtype=torch.float64), atol=1e-9)
    # Seed 0's best (-1.414 at step 400) beats seed 1's best (-0.764 at step 100).
    seed, index = select_zscore(records, ["conv/block2", "sparsity"])
    assert (seed, records[index].step) == (0, 400)


def test_batched_mlp_forwards_equal_each_seeds_own_forward():
    """One forward for all seeds gives each seed what its own MLP gives (and its own gradients)."""
    from clipasso_pl.scene.mlp import gumbel_uniforms

    S, N = 3, 6
    locs = [seeded(lambda: LocationMLP(N, 32), s) for s in (0, 1000, 2000)]
    widths = [seeded(lambda: WidthMLP(N, 32), s) for s in (0, 1000, 2000)]
    x = torch.rand(S, N * 8) * 2 - 1
    each = torch.stack([m(xi) for m, xi in zip(locs, x)])
    batched = LocationMLP.batched(locs, x)
    torch.testing.assert_close(batched, each, rtol=0, atol=1e-6)
    w_in = torch.full((N,), 1.5)
    torch.testing.assert_close(WidthMLP.batched(widths, w_in), torch.stack([m(w_in) for m in widths]), rtol=0, atol=1e-6)
    batched.sum().backward()
    grads = [m.net[0].weight.grad.clone() for m in locs]
    for m in locs:
        m.zero_grad()
    each = torch.stack([m(xi) for m, xi in zip(locs, x)])
    each.sum().backward()
    for g, m in zip(grads, locs):
        torch.testing.assert_close(g, m.net[0].weight.grad, rtol=0, atol=1e-6)
    # the Gumbel uniforms drawn for all seeds in one copy are each seed's own draw
    gens = [torch.Generator().manual_seed(s) for s in (0, 1000, 2000)]
    u = gumbel_uniforms((N,), gens, "cpu", torch.float32)
    for s, row in zip((0, 1000, 2000), u):
        assert torch.equal(row, torch.rand((N, 2), generator=torch.Generator().manual_seed(s)))
