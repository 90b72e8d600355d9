"""Object masks, dilation, inpainting and object rescaling for scene sketches (CPU, no network)."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from clipasso_pl import masking
from clipasso_pl.errors import ClipassoError
from clipasso_pl.scene.background import dilate, fill_background, inpaint
from clipasso_pl.scene.foreground import on_white, resize_obj, should_resize_object
from clipasso_pl.scene.inputs import prepare_inputs


def _scene_rgba(size: int = 64) -> Image.Image:
    """A horizontal red->blue gradient 'background' with an opaque green disc; outside the disc alpha is 0."""
    x = np.linspace(0, 1, size)[None, :].repeat(size, 0)
    rgb = np.stack([1 - x, np.full_like(x, 0.3), x], -1)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 5) ** 2
    rgb[disc] = (0.1, 0.9, 0.1)
    alpha = np.where(disc, 255, 0).astype(np.uint8)
    return Image.fromarray(np.dstack([(rgb * 255).astype(np.uint8), alpha]), "RGBA"), torch.from_numpy(disc)


def test_alpha_channel_is_the_mask():
    img, disc = _scene_rgba()
    mask = masking.object_mask(img)
    assert mask.dtype == torch.bool and torch.equal(mask, disc)


def test_mask_file_used_when_no_alpha(tmp_path):
    img, disc = _scene_rgba()
    path = tmp_path / "mask.png"
    Image.fromarray((disc.numpy() * 255).astype(np.uint8), "L").save(path)
    opaque = img.copy()
    opaque.putalpha(255)
    mask = masking.object_mask(opaque, path, original_size=opaque.size)
    assert torch.equal(mask, disc)


def test_no_mask_obtainable_is_one_line_error():
    img, _ = _scene_rgba()
    opaque = img.copy()
    opaque.putalpha(255)
    with pytest.raises(ClipassoError) as info:
        masking.object_mask(opaque, None, model=None)
    msg = str(info.value)
    assert "\n" not in msg and "mask" in msg and "alpha" in msg


def test_mismatched_mask_size_is_refused(tmp_path):
    img, _ = _scene_rgba(64)
    path = tmp_path / "mask.png"
    Image.new("L", (32, 32), 255).save(path)
    with pytest.raises(ClipassoError, match="32x32"):
        masking.object_mask(img, path, original_size=img.size)


def test_dilation_grows_by_half_the_window():
    mask = torch.zeros(31, 31, dtype=torch.bool)
    mask[15, 15] = True
    grown = dilate(mask, 11)
    ys, xs = torch.nonzero(grown, as_tuple=True)
    assert (int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())) == (10, 20, 10, 20)
    assert int(grown.sum()) == 121


def test_inpainting_fills_the_masked_region():
    img, disc = _scene_rgba(64)
    # Put the object's colour back so the hole initially holds green, unlike its surroundings.
    rgb = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).float() / 255
    hole = dilate(disc, 11)
    filled = inpaint(rgb, hole)
    assert filled.shape == rgb.shape
    # Outside the hole nothing changes (up to uint8 rounding).
    assert torch.allclose(filled[:, ~hole], rgb[:, ~hole], atol=1 / 255 + 1e-6)
    # Inside, the green object is gone: the fill is close to the background gradient there.
    x = torch.linspace(0, 1, 64)[None, :].expand(64, 64)
    expected = torch.stack([1 - x, torch.full_like(x, 0.3), x])
    err_before = (rgb[:, hole] - expected[:, hole]).abs().mean()
    err_after = (filled[:, hole] - expected[:, hole]).abs().mean()
    assert err_after < 0.1 < err_before
    assert filled[1, hole].mean() < 0.45  # no green left


def test_on_white_and_resize_obj_to_seventy_percent():
    img, disc = _scene_rgba(100)
    rgb = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).float() / 255
    fore = on_white(rgb, disc)
    assert torch.all(fore[:, ~disc] == 1)
    out, out_mask, placement = resize_obj(fore, disc, 0.7)
    ys, xs = torch.nonzero(out_mask, as_tuple=True)
    extent = max(int(ys.max()) - int(ys.min()) + 1, int(xs.max()) - int(xs.min()) + 1)
    assert abs(extent - 70) <= 2
    # The placement maps the new frame back: the new centre lands on the old centre.
    back = placement.inverse(torch.tensor([[50.0, 50.0]]), 100)
    assert torch.allclose(back, torch.tensor([[50.0, 50.0]]), atol=1.0)
    assert placement.scale == pytest.approx(70 / 39, rel=0.05)


def test_square_image_pads_transparent_only_when_the_image_has_transparency():
    img = Image.new("RGBA", (60, 30), (255, 0, 0, 255))
    sq = masking.square_image(img, 512, fix_scale=True)
    assert sq.size == (60, 60)
    # An opaque photo stays opaque (its padding must not become an 'object mask').
    assert sq.getpixel((0, 0)) == (255, 255, 255, 255) and sq.getpixel((30, 30)) == (255, 0, 0, 255)
    assert masking.alpha_mask(sq) is None
    img.putpixel((0, 0), (255, 0, 0, 0))
    sq = masking.square_image(img, 512, fix_scale=True)
    assert sq.getpixel((0, 0)) == (255, 255, 255, 0) and sq.getpixel((30, 30)) == (255, 0, 0, 255)
    assert masking.square_image(img, 40, fix_scale=False).size == (40, 40)


# ---- the whole input preparation (prepare_inputs) on a non-square RGBA scene
def scene_rgba(size=(96, 72)) -> Image.Image:
    """A photo (sky, ground, a dark line) whose alpha channel marks a red disc as the object."""
    img = Image.new("RGBA", size, (190, 210, 235, 255))
    d = ImageDraw.Draw(img)
    w, h = size
    d.rectangle((0, int(h * 0.65), w, h), fill=(90, 140, 60, 255))
    d.line((0, h // 4, w, h // 3), fill=(40, 40, 40, 255), width=2)
    obj = Image.new("L", size, 0)
    ImageDraw.Draw(obj).ellipse((w * 0.35, h * 0.25, w * 0.65, h * 0.8), fill=255)
    disc = Image.new("RGBA", size, (200, 30, 30, 255))
    img = Image.composite(disc, img, obj)
    img.putalpha(obj)
    return img


@pytest.fixture
def rgba_path(tmp_path):
    path = tmp_path / "scene.png"
    scene_rgba().save(path)
    return path


def test_square_image_keeps_colours_under_transparent_pixels():
    img = scene_rgba()
    sq = masking.square_image(img, max_size=48, fix_scale=True)
    assert sq.size == (48, 48) and sq.mode == "RGBA"
    rgb = np.asarray(sq.convert("RGB")).astype(int)
    alpha = np.asarray(sq.getchannel("A"))
    # Top-left of the photo (row 4 of 36 photo rows, after 6 rows of padding) is sky, transparent
    # in the alpha channel, and must keep its sky colour rather than go black (no premultiplying).
    assert alpha[12, 2] == 0 and abs(rgb[12, 2] - [190, 210, 235]).max() <= 3
    # The padding is white and not part of the object.
    assert (rgb[0, 0] == 255).all() and alpha[0, 0] == 0


def test_mask_file_overrides_alpha(tmp_path, rgba_path):
    box = Image.new("L", (96, 72), 0)
    ImageDraw.Draw(box).rectangle((0, 0, 20, 20), fill=255)
    path = tmp_path / "box.png"
    box.save(path)
    inputs = prepare_inputs(rgba_path, ["background", "foreground"], mask=path, max_size=96, dilation=1,
                            square="pad")
    # Square 96 px: the photo sits 12 rows down; the 21 x 21 box is the object.
    assert inputs.mask.sum() == 21 * 21 and inputs.mask[12, 0] and not inputs.mask[40, 48]
    # The official square (centre crop of the 96 x 72 photo to 72 x 72) crops the mask file the same way:
    # columns 12..20 of the box remain, as columns 0..8.
    official = prepare_inputs(rgba_path, ["background", "foreground"], mask=path, max_size=96, dilation=1)
    assert official.mask.shape == (72, 72) and official.mask.sum() == 9 * 21
    assert official.mask[0, 0] and official.mask[20, 8] and not official.mask[0, 9]


def test_prepare_inputs_splits_foreground_and_background(rgba_path):
    inputs = prepare_inputs(rgba_path, ["background", "foreground"], max_size=96, square="pad", resize_obj=False)
    assert inputs.image.shape == (3, 96, 96)
    m = inputs.mask
    # Foreground: the disc on white; background: no red left where the disc was.
    assert torch.allclose(inputs.foreground[:, ~m], torch.ones(1))
    assert (inputs.foreground[0, m] - inputs.foreground[1, m]).mean() > 0.5
    red = inputs.background[0, m] - inputs.background[1, m]
    assert red.mean() < 0.1, float(red.mean())
    assert inputs.target("foreground", 48).shape == (3, 48, 48)
    # By default (official) the single, small object is enlarged to 70 % of the side.
    resized = prepare_inputs(rgba_path, ["background", "foreground"], max_size=96, square="pad")
    assert resized.placement.scale > 1.2 and resized.inpainting.startswith(("opencv", "lama"))


def test_opaque_target_without_mask_fails_unless_background_only(tmp_path):
    path = tmp_path / "opaque.png"
    scene_rgba().convert("RGB").save(path)
    with pytest.raises(ClipassoError) as e:
        prepare_inputs(path, ["background", "foreground"], mask_model=None)
    assert "\n" not in str(e.value) and "mask=" in str(e.value)
    inputs = prepare_inputs(path, ["background"], mask_model=None, max_size=64)
    assert inputs.mask is None and torch.equal(inputs.background, inputs.image)


# ---- the official choices: square rule, object resize rule, LaMa backend
def test_official_square_squashes_large_photos_and_centre_crops_small_ones():
    big = Image.new("RGB", (600, 300), (255, 0, 0))
    assert masking.square_image(big, 512, mode="official").size == (512, 512)
    small = Image.new("RGB", (300, 200), (255, 0, 0))
    ImageDraw.Draw(small).rectangle((0, 0, 49, 199), fill=(0, 0, 255))  # left 50 columns blue
    sq = masking.square_image(small, 512, mode="official")
    assert sq.size == (200, 200)
    # The crop starts at column 50: the blue band is cut away, the centre is kept.
    assert sq.getpixel((0, 100)) == (255, 0, 0) and sq.getpixel((199, 100)) == (255, 0, 0)
    assert masking.square_image(small, 512, mode="pad").size == (300, 300)  # the switch keeps padding
    with pytest.raises(ClipassoError, match="square"):
        masking.square_image(small, 512, mode="stretch")


def test_object_is_resized_only_when_single_and_small():
    small = torch.zeros(100, 100, dtype=torch.bool)
    small[40:60, 30:69] = True  # 39 px < 70 px
    assert should_resize_object(small, 0.7)
    large = torch.zeros(100, 100, dtype=torch.bool)
    large[10:90, 10:90] = True
    assert not should_resize_object(large, 0.7)
    two = small.clone()
    two[5:25, 5:25] = True  # a second object of comparable size (> 1/3 of the first)
    assert not should_resize_object(two, 0.7)
    speck = small.clone()
    speck[2:4, 2:4] = True  # a speck smaller than a third of the object is ignored
    assert should_resize_object(speck, 0.7)


class _FillHalf(torch.nn.Module):
    """A stand-in with big-lama's TorchScript interface: (image, mask) -> image, masked pixels 0.5."""

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return image * (1 - mask) + 0.5 * mask


def test_background_inpainting_backends(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.delenv("LAMA_MODEL", raising=False)
    img, disc = _scene_rgba(60)  # 60 is not a multiple of 8: the LaMa input is padded
    rgb = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).float() / 255
    out, backend = fill_background(rgb, disc, "auto")
    assert backend == "opencv-telea"
    with pytest.raises(ClipassoError) as e:
        fill_background(rgb, disc, "lama")
    assert "\n" not in str(e.value) and "big-lama.pt" in str(e.value) and "lama_weights=" in str(e.value)
    weights = tmp_path / "big-lama.pt"
    torch.jit.script(_FillHalf()).save(str(weights))
    out, backend = fill_background(rgb, disc, "auto", lama_weights=weights)
    assert backend == "lama" and out.shape == rgb.shape
    assert torch.allclose(out[:, disc], torch.full_like(out[:, disc], 0.5))
    assert torch.equal(out[:, ~disc], rgb[:, ~disc])
    monkeypatch.setenv("LAMA_MODEL", str(weights))  # found without the setting too
    assert fill_background(rgb, disc, "lama")[1] == "lama"
    with pytest.raises(ClipassoError, match="inpaint_method"):
        fill_background(rgb, disc, "magic")
