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
