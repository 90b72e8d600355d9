"""Stroke initialisation: XDoG edges, saliency, sampling, random walk, StrokeInit modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipasso_pl.errors import ClipassoError
from clipasso_pl.init import (
    InitResult,
    StrokeInit,
    overlay,
    random_walk,
    sample_start_points,
    sampling_probability,
    saliency_map,
    xdog_edges,
)

S = 96  # synthetic canvas side
LO, HI = 32, 64  # the square occupies [LO, HI) in x and y


def square_image(bg: float, fg: float) -> torch.Tensor:
    img = torch.full((3, S, S), bg)
    img[:, LO:HI, LO:HI] = fg
    return img


def border_distance() -> torch.Tensor:
    """[S, S] Chebyshev distance to the square's outline: > 0 outside, <= 0 inside."""
    yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    return torch.maximum(torch.maximum(LO - xx, xx - (HI - 1)), torch.maximum(LO - yy, yy - (HI - 1)))


# ---------------------------------------------------------------------- XDoG


@pytest.mark.parametrize("normalized_input", [True, False])
def test_xdog_marks_the_square_border_not_its_interior(normalized_input):
    edges = xdog_edges(square_image(0.8, 1.0), normalized_input=normalized_input)
    assert edges.shape == (S, S) and edges.dtype == torch.float32
    assert set(edges.unique().tolist()) <= {0.0, 1.0}
    d = border_distance()
    # The XDoG line sits on the dark side of the step, hugging the outline.
    yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    beside_a_side = ((xx >= LO + 3) & (xx < HI - 3)) | ((yy >= LO + 3) & (yy < HI - 3))
    assert edges[(d >= 1) & (d <= 2) & beside_a_side].mean() > 0.95
    assert edges[d <= -4].sum() == 0, "flat interior must not be an edge"
    assert edges[d >= 12].mean() < 0.1, "far flat background is (nearly) edge-free"


def test_xdog_normalised_input_differs_from_pixels():
    # A mid-dark flat area is below CLIP's mean: in normalised space it is a faint
    # negative DoG response, which differs from the [0, 1] result (the reference quirk).
    img = square_image(0.5, 0.9)
    a = xdog_edges(img, normalized_input=True)
    b = xdog_edges(img, normalized_input=False)
    assert not torch.equal(a, b)


def test_xdog_matches_an_independent_scipy_recomputation():
    # The reference blurs with scipy.ndimage.gaussian_filter (boundary "reflect"). Content
    # touching the border makes a different boundary rule visible in the wide (sigma 8) blur.
    from scipy.ndimage import gaussian_filter
    from skimage.filters import threshold_otsu

    g = torch.Generator().manual_seed(7)
    img = F.interpolate(torch.rand(1, 3, 12, 12, generator=g), size=(80, 80), mode="bilinear")[0]
    img[:, :, :5] = 0.05  # a dark band along the left border
    for normalized in (True, False):
        arr = img.double().numpy().transpose(1, 2, 0)
        if normalized:
            arr = (arr - np.array([0.48145466, 0.4578275, 0.40821073])) / np.array([0.26862954, 0.26130258, 0.27577711])
        gray = arr @ np.array([0.2125, 0.7154, 0.0721])  # ITU-R 709 luminance, as rgb2gray
        d = gaussian_filter(gray, 0.8) - 0.98 * gaussian_filter(gray, 8.0)
        soft = np.where(d < -0.1, 1.0, 1.0 + np.tanh(200 * d))
        soft = (soft - soft.min()) / (soft.max() - soft.min())
        paper = soft >= threshold_otsu(soft)  # the reference's image: True = white paper
        edges = xdog_edges(img, normalized_input=normalized).numpy()
        assert 0.02 < edges.mean() < 0.9
        np.testing.assert_array_equal(edges, 1.0 - paper)


def test_saliency_xdog_probability_lives_on_the_edges():
    # Uniform saliency times the XDoG edges of the square: every start lies in the XDoG line
    # along the outline, i.e. the product keeps strokes ON edges (the paper's
    # (1 - XDoG image) * saliency). With phi 200 / eps -0.1 that line is a dark halo of
    # about 14 px on the darker side of the step (measured: d = 1..14), never the interior.
    img = square_image(0.8, 1.0)
    p = sampling_probability(torch.ones(S, S), xdog_edges(img), 0.3)
    d = border_distance()
    assert p[d <= 0].sum() == 0 and p[d >= 16].sum() == 0
    assert p[(d >= 1) & (d <= 3)].sum() > 0.15, "the line starts right at the outline"
    starts = sample_start_points(p, 40, torch.Generator().manual_seed(0)).long()
    on = d[starts[:, 1], starts[:, 0]]
    assert (on >= 1).all() and (on <= 15).all()


def test_xdog_flat_image_has_no_edges():
    assert xdog_edges(torch.full((3, 32, 32), 0.7)).sum() == 0


# --------------------------------------------------------------- probability


def test_probability_sums_to_one_and_zeros_stay_zero():
    g = torch.Generator().manual_seed(0)
    sal = torch.rand(20, 30, generator=g)
    sal[0, :] = 0
    edges = (torch.rand(20, 30, generator=g) > 0.5).float()
    p = sampling_probability(sal, edges, 0.3)
    assert p.shape == (20, 30)
    assert torch.isclose(p.sum(), torch.tensor(1.0), atol=1e-5)
    assert (p[(sal * edges) == 0] == 0).all(), "only salient edge pixels may be chosen"
    assert (p[(sal * edges) > 0] > 0).all()
    # Softmax with temperature over the kept entries, recomputed by hand.
    keep = (sal * edges) > 0
    w = torch.exp(sal[keep].double() / 0.3)
    assert torch.allclose(p[keep].double(), w / w.sum(), atol=1e-6)


def test_lower_temperature_is_peakier():
    sal = torch.linspace(0.1, 1.0, 50).reshape(5, 10)
    hot = sampling_probability(sal, None, 1.0)
    cold = sampling_probability(sal, None, 0.1)
    assert cold.max() > hot.max()
    ent = lambda p: -(p[p > 0] * p[p > 0].log()).sum()  # noqa: E731
    assert ent(cold) < ent(hot)


def test_probability_without_any_score_is_uniform():
    p = sampling_probability(torch.rand(4, 4), torch.zeros(4, 4), 0.3)
    assert torch.allclose(p, torch.full((4, 4), 1 / 16))


def test_bad_temperature_is_a_user_error():
    with pytest.raises(ClipassoError, match="init.temperature"):
        sampling_probability(torch.rand(4, 4), None, 0.0)


# ------------------------------------------------------------------ sampling


def test_sampling_has_no_repeats_and_returns_pixel_centres():
    p = sampling_probability(torch.rand(16, 16, generator=torch.Generator().manual_seed(1)), None, 0.3)
    starts = sample_start_points(p, 200, torch.Generator().manual_seed(2))
    assert starts.shape == (200, 2)
    assert len({tuple(s) for s in starts.tolist()}) == 200
    assert torch.equal(starts % 1, torch.full_like(starts, 0.5))
    assert (starts >= 0).all() and (starts < 16).all()


def test_sampling_respects_a_known_distribution():
    # 2x2 map: (x=0,y=0) 0.6, (x=1,y=0) 0.3, (x=0,y=1) 0.1, (x=1,y=1) 0.
    p = torch.tensor([[0.6, 0.3], [0.1, 0.0]])
    g = torch.Generator().manual_seed(3)
    counts = torch.zeros(2, 2)
    trials = 4000
    for _ in range(trials):
        (x, y), = sample_start_points(p, 1, g).long().tolist()
        counts[y, x] += 1
    freq = counts / trials
    assert freq[1, 1] == 0
    assert torch.allclose(freq, p, atol=0.03), freq


def test_sampling_falls_back_to_uniform_when_too_few_candidates():
    p = torch.zeros(8, 8)
    p[2, 5] = 1.0
    starts = sample_start_points(p, 10, torch.Generator().manual_seed(0))
    assert starts.shape == (10, 2)
    assert [5.5, 2.5] in starts.tolist(), "the one candidate is always taken"
    assert len({tuple(s) for s in starts.tolist()}) == 10


def test_random_walk_is_bounded_by_radius():
    starts = torch.rand(500, 2, generator=torch.Generator().manual_seed(0)) * 224
    pts = random_walk(starts, 11.2, torch.Generator().manual_seed(1))
    assert pts.shape == (500, 4, 2) and pts.dtype == torch.float32
    assert torch.equal(pts[:, 0], starts)
    steps = pts[:, 1:] - pts[:, :-1]
    assert steps.abs().max() <= 11.2 + 1e-4
    assert steps.abs().max() > 10.0, "steps use the full radius"
    assert (steps < 0).any() and (steps > 0).any()


# ------------------------------------------------------------------ saliency


@pytest.fixture(scope="module")
def tiny_vit():
    from clipasso_pl.clip import load_clip_model, register_tiny_models

    register_tiny_models()
    return load_clip_model("tiny-vit", None, key="init")


def test_saliency_is_min_max_normalised_and_matches_attention(tiny_vit):
    from clipasso_pl.clip import vit_attention

    img = torch.rand(3, 224, 224, generator=torch.Generator().manual_seed(0))
    sal = saliency_map(img, tiny_vit)
    assert sal.shape == (224, 224)
    assert sal.min().item() == pytest.approx(0.0, abs=1e-6)
    assert sal.max().item() == pytest.approx(1.0, abs=1e-6)
    # Recompute by hand: CLS row (token 0) over patch tokens, mean over blocks and heads.
    with torch.no_grad():
        attn = vit_attention(tiny_vit, img[None])  # [1, L, heads, T, T]
    assert attn.shape[1] == 2, "tiny-vit has two blocks"
    cls = attn[0, :, :, 0, 1:].mean(dim=(0, 1))
    g = int(round(cls.numel() ** 0.5))
    up = F.interpolate(cls.reshape(1, 1, g, g).float(), size=(224, 224), mode="bicubic", align_corners=False)[0, 0]
    expect = (up - up.min()) / (up.max() - up.min())
    assert torch.allclose(sal, expect, atol=1e-5)


def test_saliency_needs_a_vit():
    from clipasso_pl.clip import load_clip_model, register_tiny_models

    register_tiny_models()
    rn = load_clip_model("tiny-rn", None, key="init")
    with pytest.raises(ClipassoError, match="init.model"):
        saliency_map(torch.rand(3, 64, 64), rn)


# ---------------------------------------------------------------- StrokeInit


@pytest.mark.parametrize("mode", ["saliency_xdog", "saliency"])
def test_stroke_init_saliency_modes(mode, tiny_vit):
    init = StrokeInit(mode=mode, model="tiny-vit", pretrained=None)
    init._model = tiny_vit  # share the module-scoped model; loading is tested below
    target = torch.rand(3, 224, 224, generator=torch.Generator().manual_seed(5))
    a = init(target, 16, torch.Generator().manual_seed(0))
    b = init(target, 16, torch.Generator().manual_seed(0))
    c = init(target, 16, torch.Generator().manual_seed(1))
    assert isinstance(a, InitResult)
    assert a.points.shape == (16, 4, 2) and a.points.dtype == torch.float32
    assert a.starts.shape == (16, 2)
    assert torch.equal(a.points[:, 0], a.starts)
    assert torch.equal(a.points, b.points), "same generator seed, same strokes"
    assert not torch.equal(a.points, c.points)
    assert a.saliency.shape == (224, 224) and a.probability.shape == (224, 224)
    assert torch.isclose(a.probability.sum(), torch.tensor(1.0), atol=1e-5)
    # Every start is a pixel with non-zero probability.
    ix = a.starts.long()
    assert (a.probability[ix[:, 1], ix[:, 0]] > 0).all()
    # The reference's step is 0.05 * (U - 0.5) of the side: at most 0.025 * 224 = 5.6 px per axis.
    steps = a.points[:, 1:] - a.points[:, :-1]
    assert steps.abs().max() <= 0.025 * 224 + 1e-4
    assert steps.abs().max() > 0.02 * 224, "the window is used in full"
    if mode == "saliency_xdog":
        edges = xdog_edges(target)
        assert (edges[ix[:, 1], ix[:, 0]] == 1).all(), "saliency_xdog starts lie on XDoG edges"


def test_stroke_init_loads_its_model_lazily_once():
    init = StrokeInit(mode="saliency", model="tiny-vit", pretrained=None)
    assert init._model is None
    res = init(torch.rand(3, 224, 224), 4, torch.Generator().manual_seed(0))
    first = init._model
    assert first is not None and res.saliency is not None
    init(torch.rand(3, 224, 224), 4, torch.Generator().manual_seed(0))
    assert init._model is first


def test_stroke_init_reuses_maps_for_the_same_target_only(tiny_vit):
    init = StrokeInit(mode="saliency_xdog", model="tiny-vit", pretrained=None)
    init._model = tiny_vit
    target = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(3))
    calls = []
    real = init.saliency
    init.saliency = lambda t: calls.append(1) or real(t)  # count the ViT forwards
    a = init(target, 4, torch.Generator().manual_seed(0))
    b = init(target.clone(), 4, torch.Generator().manual_seed(1))
    assert len(calls) == 1 and torch.equal(a.probability, b.probability)
    other = target.flip(-1)
    c = init(other, 4, torch.Generator().manual_seed(0))
    assert len(calls) == 2
    expect = sampling_probability(saliency_map(other, tiny_vit), xdog_edges(other), 0.3)
    assert torch.allclose(c.probability, expect)


def test_random_mode_needs_no_model():
    init = StrokeInit(mode="random", model="no-such-model", pretrained="/nonexistent.pt")
    res = init(torch.zeros(3, 100, 120), 8, torch.Generator().manual_seed(0))
    assert init._model is None
    assert res.saliency is None and res.probability is None
    assert res.points.shape == (8, 4, 2)
    assert (res.starts[:, 0] <= 120).all() and (res.starts[:, 1] <= 100).all()
    again = init(torch.zeros(3, 100, 120), 8, torch.Generator().manual_seed(0))
    assert torch.equal(res.points, again.points)


def test_unknown_mode_is_a_user_error():
    with pytest.raises(ClipassoError, match="init.mode"):
        StrokeInit(mode="edges_only")


def test_overlay_draws_heatmap_and_start_points():
    img = torch.full((3, 64, 64), 0.5)
    sal = torch.zeros(64, 64)
    sal[:, 32:] = 1.0
    pic = overlay(img, sal, torch.tensor([[10.5, 10.5], [50.5, 40.5]]))
    assert pic.shape == (64, 64, 3) and pic.dtype == np.uint8
    assert tuple(pic[10, 10]) == (255, 255, 255) and tuple(pic[40, 50]) == (255, 255, 255)
    # Hot side is redder than the cold side, which is bluer.
    assert pic[60, 60, 0] > pic[60, 5, 0] and pic[60, 5, 2] > pic[60, 60, 2]
