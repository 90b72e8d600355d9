"""ClipassoLoss: per-seed terms against a direct re-computation, gradient paths, seed independence."""

import pytest
import torch
import torch.nn.functional as F

from clipasso_pl.clip import JointAugment
from clipasso_pl.losses import ClipassoLoss, per_seed_mean

S, A = 2, 2  # seeds, augmentations per seed
V = 1 + A  # views per seed


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def sketch_and_target(seed=0):
    g = torch.Generator().manual_seed(seed)
    sketch = (0.6 + 0.4 * torch.rand(S, 3, 224, 224, generator=g)).requires_grad_(True)
    target = torch.rand(1, 3, 224, 224, generator=g).requires_grad_(True)
    return sketch, target


def views_and_features(features, sketch, target, seeds=(0, 1000)):
    sv, tv = JointAugment(num_augs=A)(sketch, target, gens(*seeds))
    return features(sv), features(tv)


def test_terms_equal_direct_recomputation_resnet(rn):
    sketch, target = sketch_and_target()
    fs, ft = views_and_features(rn, sketch, target)
    weights = [0.0, 0.5, 1.0, 2.0, 0.0]
    out = ClipassoLoss(weights, fc_weight=0.1, layer_names=rn.layer_names)(fs, ft, S)
    assert set(out) == {"conv/layer1", "conv/layer2", "conv/layer3", "fc", "loss"}
    for s in range(S):
        rows = range(s * V, (s + 1) * V)
        total = 0.0
        for name, w in zip(rn.layer_names, weights):
            if w == 0:
                continue
            direct = sum(((fs[name][r] - ft[name][r]) ** 2).mean() for r in rows) / V
            torch.testing.assert_close(out[f"conv/{name}"][s], direct, rtol=1e-5, atol=0)
            total = total + w * direct
        fc = sum(1 - torch.dot(fs["fc"][r], ft["fc"][r]) / (fs["fc"][r].norm() * ft["fc"][r].norm()) for r in rows) / V
        torch.testing.assert_close(out["fc"][s], fc, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(out["loss"][s], total + 0.1 * fc, rtol=1e-5, atol=0)
    assert all(v.shape == (S,) for v in out.values())
    assert (out["conv/layer2"] > 0).all() and (out["fc"] > 0).all()


def test_terms_equal_direct_recomputation_vit(vit):
    sketch, target = sketch_and_target(1)
    fs, ft = views_and_features(vit, sketch, target)
    out = ClipassoLoss([0.0, 1.0], fc_weight=0.0, layer_names=vit.layer_names)(fs, ft, S)
    assert set(out) == {"conv/block1", "loss"}  # no fc term when its weight is 0
    direct = ((fs["block1"] - ft["block1"]) ** 2).mean(dim=(1, 2)).view(S, V).mean(1)
    torch.testing.assert_close(out["conv/block1"], direct)
    torch.testing.assert_close(out["loss"], direct)


def test_default_weights_are_the_papers():
    loss = ClipassoLoss()
    assert loss.active == {"layer2": 1.0, "layer3": 1.0} and loss.fc_weight == 0.1


def test_gradient_reaches_only_the_sketch(rn):
    sketch, target = sketch_and_target(2)
    sv, tv = JointAugment(num_augs=A)(sketch, target, gens(0, 1000))
    assert not tv.requires_grad  # the augmentation already keeps the target out of the graph
    # Target features that do carry a graph: the loss itself must detach them.
    target_views = tv.clone().requires_grad_(True)
    out = ClipassoLoss(layer_names=rn.layer_names)(rn(sv), rn(target_views), S)
    out["loss"].sum().backward()
    assert sketch.grad is not None and sketch.grad.abs().sum() > 0
    assert target_views.grad is None and target.grad is None
    assert all(p.grad is None for p in rn.model.parameters())


def test_seeds_are_independent(rn):
    """Seed 1's loss has no gradient on seed 0's sketch, and equals seed 1 computed alone."""
    sketch, target = sketch_and_target(3)
    loss = ClipassoLoss(layer_names=rn.layer_names)
    fs, ft = views_and_features(rn, sketch, target, seeds=(0, 1000))
    out = loss(fs, ft, S)
    out["loss"][1].backward()
    assert sketch.grad[0].abs().sum() == 0 and sketch.grad[1].abs().sum() > 0
    alone_s, alone_t = views_and_features(rn, sketch[1:].detach(), target.detach(), seeds=(1000,))
    alone = loss(alone_s, alone_t, 1)
    for key, value in out.items():
        torch.testing.assert_close(value[1:], alone[key], rtol=1e-4, atol=1e-7, msg=key)


def test_target_rows_per_seed_or_shared():
    """Target features may come as one row per view, one per seed, or a single row."""
    g = torch.Generator().manual_seed(0)
    fs = {"layer2": torch.randn(S * V, 4, 3, 3, generator=g), "fc": torch.randn(S * V, 8, generator=g)}
    one = {k: torch.randn(1, *v.shape[1:], generator=g) for k, v in fs.items()}
    per_seed = {k: v.expand(S, *v.shape[1:]) for k, v in one.items()}
    per_view = {k: v.expand(S * V, *v.shape[1:]) for k, v in one.items()}
    loss = ClipassoLoss([1.0], layer_names=["layer2"])
    ref = loss(fs, per_view, S)
    for tf in (one, per_seed):
        got = loss(fs, tf, S)
        for key in ref:
            torch.testing.assert_close(got[key], ref[key])
    with pytest.raises(ValueError, match="target features have batch 4"):
        loss(fs, {k: v.expand(4, *v.shape[1:]) for k, v in one.items()}, S)


def test_loss_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(0)
    fs = {"l": torch.randn(4, 3, 2, dtype=torch.float64, generator=g, requires_grad=True),
          "fc": torch.randn(4, 5, dtype=torch.float64, generator=g, requires_grad=True)}
    ft = {k: torch.randn(v.shape, dtype=torch.float64, generator=g) for k, v in fs.items()}
    loss = ClipassoLoss([0.7], fc_weight=0.3, layer_names=["l"])
    weights = torch.tensor([1.0, -2.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: (loss({"l": a, "fc": b}, ft, 2)["loss"] * weights).sum(),
                                    (fs["l"], fs["fc"]))


def test_bad_arguments_are_clear_errors(rn):
    with pytest.raises(ValueError, match=r"3 entries.*5 layers \(stem, layer1, layer2, layer3, layer4\)"):
        ClipassoLoss([0, 1, 1], layer_names=rn.layer_names)
    with pytest.raises(ValueError, match=r"2 layers \(block0, block1\)"):
        ClipassoLoss([0, 0, 1, 1, 0], layer_names=["block0", "block1"])
    feats = {"layer2": torch.zeros(6, 2), "fc": torch.ones(6, 2)}
    with pytest.raises(ValueError, match="needs feature 'layer3'"):
        ClipassoLoss(layer_names=rn.layer_names)(feats, feats, 2)
    with pytest.raises(ValueError, match="num_seeds=4"):
        ClipassoLoss([1.0], layer_names=["layer2"])(feats, feats, 4)


def test_per_seed_mean():
    values = torch.arange(6.0)
    torch.testing.assert_close(per_seed_mean(values, 2), torch.tensor([1.0, 4.0]))
    torch.testing.assert_close(per_seed_mean(values, 1), values.mean()[None])
    with pytest.raises(ValueError, match="num_seeds=4"):
        per_seed_mean(values, 4)
    assert F.mse_loss(per_seed_mean(values, 6), values) == 0
