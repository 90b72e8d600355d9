"""JointAugment: torchvision's draws and geometry, batched, per-seed generators, differentiable."""

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.functional as TF

from clipasso_pl.clip import JointAugment
from clipasso_pl.images import resolve_target
from clipasso_pl.sketch_target import load_target


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.fixture(scope="module")
def photo():
    return load_target(resolve_target(None), size=224)  # [3, 224, 224]


def sketch_like(n, size=224, seed=0):
    """Dark strokes over white, as the renderer gives: thick random lines, slightly blurred."""
    g = torch.Generator().manual_seed(seed)
    img = torch.ones(n, 3, size, size)
    for i in range(n):
        for _ in range(6):
            r = int(torch.randint(10, size - 10, (1,), generator=g))
            c0, c1 = sorted(torch.randint(0, size, (2,), generator=g).tolist())
            img[i, :, r - 2:r + 2, c0:c1 + 1] = 0
            img[i, :, c0:c1 + 1, r - 2:r + 2] = 0
    return F.avg_pool2d(img, 3, 1, 1)


def test_shapes_and_plain_rows_first():
    aug = JointAugment(num_augs=3)
    sketch, target = sketch_like(2), torch.rand(1, 3, 224, 224)
    sv, tv = aug(sketch, target, gens(0, 1))
    assert sv.shape == tv.shape == (8, 3, 224, 224)
    for s in range(2):
        assert torch.equal(sv[4 * s], sketch[s])
        assert torch.equal(tv[4 * s], target[0])
        for k in range(1, 4):
            assert not torch.equal(sv[4 * s + k], sketch[s])


def test_parameters_follow_torchvision_draws():
    """With the same stream (seed), our draws equal torchvision's on the global RNG, p-test included."""
    aug = JointAugment(num_augs=3, distortion_scale=0.5, crop_scale=0.8)
    starts, ends, crops = aug.draw(gens(7), 224, 224)
    torch.manual_seed(7)
    img = torch.zeros(3, 224, 224)
    for v in range(3):
        assert torch.rand(1) < 1.0  # RandomPerspective(p=1).forward's draw
        s, e = T.RandomPerspective.get_params(224, 224, 0.5)
        crop = T.RandomResizedCrop.get_params(img, scale=[0.8, 0.8], ratio=[1.0, 1.0])
        assert starts[v].tolist() == s and ends[v].tolist() == e
        assert crops[v].tolist() == list(crop)
    assert crops[:, 2:].eq(200).all()  # round(sqrt(0.8) * 224)


def torchvision_views(image, aug, seed):
    """The same views through torchvision's functional perspective then resized_crop (two interpolations)."""
    starts, ends, crops = aug.draw(gens(seed), image.shape[-2], image.shape[-1])
    views = []
    for v in range(aug.num_augs):
        warped = TF.perspective(image[0], starts[v].int().tolist(), ends[v].int().tolist(),
                                interpolation=TF.InterpolationMode.BILINEAR, fill=[0.0, 0.0, 0.0])
        top, left, h, w = crops[v].int().tolist()
        views.append(TF.resized_crop(warped, top, left, h, w, [aug.size, aug.size],
                                     interpolation=TF.InterpolationMode.BILINEAR, antialias=True))
    return torch.stack(views)


def inside(ref, ours):
    """Pixels at least 3 px inside the warped image in both (the black fill border is excluded)."""
    valid = ((ref > 0.999) & (ours > 0.999)).float()[:, None]
    return (-F.max_pool2d(-valid, 7, 1, 3))[:, 0] > 0.5


def test_geometry_matches_torchvision_exactly_on_a_ramp():
    """Bilinear interpolation is exact on linear images, so a coordinate ramp isolates the geometry."""
    yy, xx = torch.meshgrid(torch.arange(224.0) / 224, torch.arange(224.0) / 224, indexing="ij")
    ramp = torch.stack([xx, yy, torch.ones_like(xx)])[None]
    aug = JointAugment(num_augs=4)
    ours = aug(ramp, ramp, gens(11))[0][1:]
    ref = torchvision_views(ramp, aug, 11)
    mask = inside(ref[:, 2], ours[:, 2])
    assert mask.float().mean() > 0.4
    diff = (ours - ref)[:, :2].abs().amax(dim=1)[mask]
    assert diff.max() < 2e-3, diff.max()  # a fraction of a pixel (1 px = 1/224 = 4.5e-3)


@pytest.mark.parametrize("which", ["photo", "sketch"])
def test_views_match_torchvision_perspective_then_resized_crop(which, photo):
    aug = JointAugment(num_augs=4)
    image = photo[None] if which == "photo" else sketch_like(1, seed=3)
    sv, tv = aug(image, image, gens(11))
    assert torch.equal(sv, tv)
    ours, ref = sv[1:], torchvision_views(image, aug, 11)
    diff = (ours - ref).abs()
    # One bilinear lookup instead of two: differences are interpolation-sized; torchvision's fill
    # blending also darkens the 1-px border of the warped region once more than zero padding does.
    assert diff.mean() < 0.01, diff.mean()
    for v in range(4):
        assert ours[v].amin() == 0 and ref[v].amin() == 0  # black fill outside the warped image


def test_views_equal_torchvision_transforms_on_the_same_seed(photo):
    """The composed torchvision transforms, run on the global RNG seeded like our generator, give the
    same views of the stacked (sketch, target) pair: same draws, same geometry, shared by both images."""
    aug = JointAugment(num_augs=3)
    sketch = sketch_like(1, seed=5)
    sv, tv = aug(sketch, photo[None], gens(21))
    compose = T.Compose([T.RandomPerspective(distortion_scale=0.5, p=1.0, fill=0),
                         T.RandomResizedCrop(224, scale=(0.8, 0.8), ratio=(1.0, 1.0))])
    torch.manual_seed(21)
    pair = torch.cat([sketch, photo[None]])  # [2, 3, H, W]: one draw applied to both
    ref = torch.stack([compose(pair) for _ in range(3)])  # [A, 2, 3, 224, 224]
    for ours, theirs in ((sv[1:], ref[:, 0]), (tv[1:], ref[:, 1])):
        diff = (ours - theirs).abs()
        assert diff.mean() < 0.01, diff.mean()
        # a different draw would be far off: compare with the next view's reference
        assert (ours[0] - theirs[1]).abs().mean() > 5 * diff.mean()


def test_seed_views_do_not_depend_on_other_seeds():
    aug = JointAugment(num_augs=2)
    sketch, target = sketch_like(3), torch.rand(3, 3, 224, 224)
    together, t_together = aug(sketch, target, gens(0, 1000, 2000))
    alone, t_alone = aug(sketch[1:2], target[1:2], gens(1000))
    torch.testing.assert_close(together[3:6], alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(t_together[3:6], t_alone, rtol=0, atol=1e-6)
    # different seeds draw different views of the same image
    same_img, _ = aug(sketch[:1].expand(2, -1, -1, -1), target[:1], gens(0, 1))
    assert not torch.allclose(same_img[1], same_img[4])


def test_generators_advance_between_steps():
    aug = JointAugment(num_augs=1)
    g = gens(5)
    sketch = sketch_like(1)
    first, _ = aug(sketch, sketch, g)
    second, _ = aug(sketch, sketch, g)
    assert not torch.allclose(first[1], second[1])


def test_single_target_row_equals_one_per_seed():
    aug = JointAugment(num_augs=2)
    sketch, target = sketch_like(2), torch.rand(1, 3, 224, 224)
    a = aug(sketch, target, gens(0, 1))[1]
    b = aug(sketch, target.expand(2, -1, -1, -1), gens(0, 1))[1]
    assert torch.equal(a, b)


def test_differentiable_wrt_sketch():
    aug = JointAugment(num_augs=2, size=6)
    sketch = torch.rand(2, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    target = torch.rand(1, 1, 6, 6, dtype=torch.float64)
    weights = torch.rand(6, 1, 6, 6, dtype=torch.float64)

    def f(x):
        return (aug(x, target, gens(3, 4))[0] * weights).sum()

    assert torch.autograd.gradcheck(f, (sketch,))
    f(sketch).backward()
    # a view of seed 0 never pulls on seed 1's pixels
    sketch.grad = None
    (aug(sketch, target, gens(3, 4))[0][:3] * weights[:3]).sum().backward()
    assert sketch.grad[1].abs().sum() == 0 and sketch.grad[0].abs().sum() > 0


def test_other_canvas_sizes_are_resized_to_size():
    aug = JointAugment(num_augs=1, size=224)
    sv, tv = aug(torch.rand(1, 3, 112, 112), torch.rand(1, 3, 112, 112), gens(0))
    assert sv.shape == tv.shape == (2, 3, 224, 224)


def test_zero_augs_and_bad_arguments():
    sketch = torch.rand(2, 3, 32, 32)
    sv, tv = JointAugment(num_augs=0, size=32)(sketch, sketch[:1], gens(0, 1))
    assert torch.equal(sv, sketch) and tv.shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="generators"):
        JointAugment(size=32)(sketch, sketch, gens(0))
    with pytest.raises(ValueError, match="num_augs"):
        JointAugment(num_augs=-1)
