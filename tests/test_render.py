"""The torch renderer against diffvg's reference renders (tests/reference/diffvg)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from clipasso_pl.errors import ClipassoError
from clipasso_pl.render import DiffvgRenderer, Renderer, TorchRenderer, build_renderer, render_strokes
from clipasso_pl.strokes import Strokes

SCENES = ["strokes_004", "strokes_016", "strokes_032", "strokes_064", "strokes_128", "strokes_256", "width3_016", "alpha_016"]
# Gradient cosine floors against diffvg's 16-seed mean gradient (W, weight_smooth). diffvg's
# own single render reaches 0.99 on small scenes and 0.91 at 256 strokes; on the smooth weight
# its stroke gradients are biased on tight curves (reference README), which caps agreement.
COSINE_FLOOR = {"strokes_004": 0.95, "strokes_016": 0.95, "strokes_032": 0.95}


def load_scene(reference: Path, name: str, dtype=torch.float32):
    z = np.load(reference / f"{name}.npz")
    points = torch.tensor(z["points"], dtype=dtype)[None]
    half_widths = torch.tensor(z["widths"], dtype=dtype)[None]
    opacities = torch.tensor(z["alphas"], dtype=dtype)[None]
    return z, points, half_widths, opacities


def hwc(image):
    return image[0].permute(1, 2, 0)


def cosine(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def weight_smooth(reference_dir):
    return torch.from_numpy(np.load(reference_dir / "weight_smooth.npz")["weight_smooth"])


@pytest.mark.parametrize("name", SCENES)
def test_matches_diffvg_reference(name, weight_smooth, reference_dir):
    z, points, hw, op = load_scene(reference_dir, name)
    points.requires_grad_(True)
    rgb = hwc(render_strokes(points, hw, op, 224, 224))
    assert rgb.shape == (224, 224, 3) and float(rgb.min()) >= 0 and float(rgb.max()) <= 1
    image = rgb.detach().numpy()
    mean16 = z["rgb_mean16"]
    ours_mae = np.abs(image - mean16).mean()
    diffvg_mae = np.abs(z["rgb"] - mean16).mean()
    assert ours_mae <= diffvg_mae, (ours_mae, diffvg_mae)
    ink, ink_ref = (1 - image).sum(), (1 - mean16).sum()
    assert abs(ink / ink_ref - 1) <= 0.01, (ink, ink_ref)

    (grad,) = torch.autograd.grad((rgb * torch.from_numpy(z["weight"])).sum(), points, retain_graph=True)
    (grad_smooth,) = torch.autograd.grad((rgb * weight_smooth).sum(), points)
    floor = COSINE_FLOOR.get(name, 0.90)
    assert cosine(grad, z["grad_points_mean16"]) >= floor
    assert cosine(grad_smooth, z["grad_points_smooth_mean16"]) >= 0.90
