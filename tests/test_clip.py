"""CLIP loading, tapped features and ViT attention on the tiny registered models."""

import os
import subprocess
import sys
import textwrap
import time

import open_clip
import pytest
import torch
from torch import nn

from clipasso_pl.clip import (
    CLIP_MEAN,
    CLIP_STD,
    TINY_RN,
    TINY_VIT,
    load_clip_model,
    register_tiny_models,
    vit_attention,
)
from clipasso_pl.clip.features import normalize
from clipasso_pl.errors import ClipassoError


def images(n=2, size=224, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


# ------------------------------------------------------------------ registry and loading
def test_register_tiny_models_is_idempotent():
    before = open_clip.list_models()
    register_tiny_models()
    register_tiny_models()
    assert open_clip.list_models() == before
    assert {TINY_RN, TINY_VIT} <= set(before)


def test_unknown_model_names_closest_valid_names():
    with pytest.raises(ClipassoError) as e:
        load_clip_model("RN101-quickgelo", None)
    msg = str(e.value)
    assert "RN101-quickgelo" in msg and "RN101-quickgelu" in msg and "\n" not in msg


@pytest.mark.parametrize("pretrained", [None, "null", "none"])
def test_random_weights_are_frozen_eval_and_reproducible(pretrained):
    rng = torch.get_rng_state()
    a = load_clip_model(TINY_RN, pretrained)
    assert torch.equal(rng, torch.get_rng_state()), "loading must not consume the global RNG"
    b = load_clip_model(TINY_RN, None)
    assert not a.training
    assert not any(p.requires_grad for p in a.parameters())
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_random_resnet_features_carry_signal(rn):
    """Random weights must give order-one features, else a random-weight pipeline check optimises noise."""
    feats = rn(images())
    for name in rn.layer_names:
        assert feats[name].std() > 0.05, name


def _other_weights(model_name):
    torch.manual_seed(123)
    return open_clip.create_model(model_name, pretrained=None).eval()


def _assert_same_weights(model, reference):
    ref = reference.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref[k]), k


def test_load_plain_state_dict(tmp_path):
    ref = _other_weights(TINY_RN)
    path = tmp_path / "plain.pt"
    torch.save(ref.state_dict(), path)
    _assert_same_weights(load_clip_model(TINY_RN, str(path)), ref)


def test_load_open_clip_training_checkpoint_with_module_prefix(tmp_path):
    ref = _other_weights(TINY_VIT)
    path = tmp_path / "epoch_3.pt"
    sd = {f"module.{k}": v for k, v in ref.state_dict().items()}
    torch.save({"epoch": 3, "name": "run", "state_dict": sd}, path)
    model = load_clip_model(TINY_VIT, str(path))
    _assert_same_weights(model, ref)
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_load_torchscript_export(tmp_path):
    ref = _other_weights(TINY_RN)
    traced = torch.jit.trace_module(ref, {"encode_image": images(1)})
    path = tmp_path / "RN-tiny.pt"
    torch.jit.save(traced, str(path))
    _assert_same_weights(load_clip_model(TINY_RN, str(path)), ref)


def test_checkpoint_of_other_model_is_a_clear_error(tmp_path):
    path = tmp_path / "vit.pt"
    torch.save(_other_weights(TINY_VIT).state_dict(), path)
    with pytest.raises(ClipassoError, match="does not fit model tiny-rn"):
        load_clip_model(TINY_RN, str(path))


def test_missing_checkpoint_file_and_unknown_tag():
    with pytest.raises(ClipassoError, match="no such checkpoint file"):
        load_clip_model(TINY_RN, "/nonexistent/weights.pt")
    with pytest.raises(ClipassoError, match="known tags for RN50.*openai"):
        load_clip_model("RN50", "notatag")


@pytest.mark.parametrize("key", ["clip", "init"])
def test_offline_tag_gives_the_one_line_fix(key):
    # conftest sets HF_HUB_OFFLINE=1 and nothing is cached for this tag here.
    with pytest.raises(ClipassoError) as e:
        load_clip_model("RN101-quickgelu", "openai", key=key)
    assert str(e.value) == (
        "could not load CLIP weights RN101-quickgelu/openai (offline): "
        f"pass {key}.pretrained=<local checkpoint path>, or {key}.pretrained=null to check the pipeline with random weights"
    )


def _run_isolated(code: str, env_extra: dict, tmp_path) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter: the hub client reads HF_* variables at import."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)


@pytest.mark.slow
def test_unreachable_hub_fails_fast_without_offline_flag(tmp_path):
    """HF_HUB_OFFLINE unset, the hub unreachable, an empty cache: a clear error well within 60 s."""
    code = """
        import time
        from clipasso_pl.clip import load_clip_model
        from clipasso_pl.errors import ClipassoError
        t = time.perf_counter()
        try:
            load_clip_model("RN101-quickgelu", "openai")
        except ClipassoError as e:
            print("ERR", e)
        print("SECONDS", time.perf_counter() - t)
    """
    start = time.perf_counter()
    out = _run_isolated(code, {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}, tmp_path)
    assert time.perf_counter() - start < 60
    assert "ERR could not load CLIP weights RN101-quickgelu/openai (offline" in out.stdout, out.stdout + out.stderr
    assert "clip.pretrained=null" in out.stdout
    seconds = float(out.stdout.split("SECONDS")[1])
    assert seconds < 30


@pytest.mark.slow
def test_cached_tag_weights_load_without_network(tmp_path):
    """A tag whose weights sit in the hub cache loads with the hub unreachable and HF_HUB_OFFLINE unset."""
    ref = _other_weights(TINY_RN)
    snapshot = tmp_path / "hf" / "hub" / "models--clipasso-test--tiny-rn"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (snapshot / "snapshots" / commit).mkdir(parents=True)
    (snapshot / "refs").mkdir()
    (snapshot / "refs" / "main").write_text(commit)
    torch.save(ref.state_dict(), snapshot / "snapshots" / commit / "open_clip_pytorch_model.bin")
    torch.save(ref.state_dict(), tmp_path / "reference.pt")
    code = """
        import torch
        from open_clip import pretrained
        pretrained._PRETRAINED["tiny-rn"] = {"cached": pretrained._pcfg(hf_hub="clipasso-test/tiny-rn/")}
        from clipasso_pl.clip import load_clip_model
        model = load_clip_model("tiny-rn", "cached")
        ref = torch.load("reference.pt")
        same = all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
        print("SAME", same)
    """
    out = _run_isolated(code, {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}, tmp_path)
    assert "SAME True" in out.stdout, out.stdout + out.stderr


# ------------------------------------------------------------------ features
def test_resnet_taps_match_open_clip(rn):
    x = images()
    feats = rn(x)
    assert rn.layer_names == ["stem", "layer1", "layer2", "layer3", "layer4"] and not rn.is_vit
    assert list(feats) == rn.layer_names + ["fc"]
    with torch.no_grad():
        ref = rn.model.visual.forward_intermediates(normalize(x))
        emb = rn.model.encode_image(normalize(x))
    for name, r in zip(rn.layer_names, ref["image_intermediates"]):
        torch.testing.assert_close(feats[name], r, msg=name)
    torch.testing.assert_close(feats["fc"], emb)
    assert feats["stem"].shape[-1] == 56 and feats["layer4"].shape[-1] == 7


def test_vit_taps_match_open_clip(vit):
    x = images()
    feats = vit(x)
    assert vit.is_vit and vit.layer_names == ["block0", "block1"]
    with torch.no_grad():
        ref = vit.model.visual.forward_intermediates(normalize(x), output_fmt="NLC", output_extra_tokens=True)
        emb = vit.model.encode_image(normalize(x))
    for i, name in enumerate(vit.layer_names):
        assert feats[name].shape == (2, 50, 48)
        torch.testing.assert_close(feats[name][:, 1:], ref["image_intermediates"][i])
        torch.testing.assert_close(feats[name][:, :1], ref["image_intermediates_prefix"][i])
    torch.testing.assert_close(feats["fc"], emb)


def test_normalisation_constants():
    x = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1) + torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(normalize(x), torch.ones(1, 3, 1, 1))


@pytest.mark.parametrize("which", ["rn", "vit"])
def test_gradients_reach_images_not_weights(which, request):
    features = request.getfixturevalue(which)
    x = images(1).requires_grad_(True)
    out = features(x)
    (out["fc"].sum() + out[features.layer_names[-1]].pow(2).mean()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in features.model.parameters())


def test_stays_in_eval_mode_and_resizes_other_sizes(rn):
    rn.train()
    assert not rn.model.training and not rn.model.visual.layer1[0].bn1.training
    small = rn(images(1, size=112))
    assert small["layer4"].shape == (1, 256, 7, 7)
    rn.eval()


# ------------------------------------------------------------------ attention
def test_vit_attention_reproduces_each_block_output(vit):
    x = images()
    captured = []
    hooks = [b.attn.register_forward_hook(lambda m, a, o: captured.append((a[0], o[0])))
             for b in vit.model.visual.transformer.resblocks]
    try:
        probs = vit_attention(vit.model, x)
    finally:
        for h in hooks:
            h.remove()
    L, heads, T = 2, 3, 50
    assert probs.shape == (2, L, heads, T, T)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, L, heads, T))
    for block, p, (attn_in, attn_out) in zip(vit.model.visual.transformer.resblocks, probs.unbind(1), captured):
        mha = block.attn
        v = nn.functional.linear(attn_in, mha.in_proj_weight.chunk(3)[2], mha.in_proj_bias.chunk(3)[2])
        v = v.view(2, T, heads, -1).transpose(1, 2)  # [B, heads, T, d]
        mixed = (p @ v).transpose(1, 2).reshape(2, T, -1)
        torch.testing.assert_close(mha.out_proj(mixed), attn_out, atol=1e-5, rtol=1e-4)
        # and the same probabilities as torch's own need_weights path
        _, w = mha(attn_in, attn_in, attn_in, need_weights=True, average_attn_weights=False)
        torch.testing.assert_close(p, w, atol=1e-6, rtol=1e-4)


def test_vit_attention_refuses_resnets(rn):
    with pytest.raises(ClipassoError, match="ViT"):
        vit_attention(rn.model, images(1))
