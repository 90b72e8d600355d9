import io

import numpy as np
import pytest
import torch
from PIL import Image

from clipasso_pl.errors import ClipassoError
from clipasso_pl.images import atomic_write_text, open_image, save_png
from clipasso_pl.sketch_target import load_target


def write(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def test_square_rgb_resized_to_canvas(tmp_path):
    p = write(Image.new("RGB", (300, 300), (255, 0, 0)), tmp_path / "red.png")
    t = load_target(p, size=224)
    assert t.shape == (3, 224, 224) and t.dtype == torch.float32
    assert torch.allclose(t[:, 100, 100], torch.tensor([1.0, 0.0, 0.0]))


def test_fix_scale_pads_with_white_and_squash_does_not(tmp_path):
    p = write(Image.new("RGB", (400, 200), (0, 0, 0)), tmp_path / "wide.png")
    padded = load_target(p, size=224, fix_scale=True)
    squashed = load_target(p, size=224, fix_scale=False)
    assert padded[:, 5, 112].min() == 1.0 and padded[:, 112, 112].max() == 0.0  # white band above the object
    assert squashed.max() == 0.0


def test_rgba_composited_on_white(tmp_path):
    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    img.paste((0, 0, 255, 255), (16, 16, 48, 48))
    t = load_target(write(img, tmp_path / "a.png"), size=64)
    assert torch.allclose(t[:, 0, 0], torch.ones(3))
    assert torch.allclose(t[:, 32, 32], torch.tensor([0.0, 0.0, 1.0]))


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "I;16", "LA", "RGBA"])
def test_image_modes_load_as_rgb(tmp_path, mode):
    base = Image.new("RGB", (40, 30), (200, 100, 50))
    if mode == "I;16":
        img = Image.fromarray(np.full((30, 40), 40000, dtype=np.uint16))
    else:
        img = base.convert(mode)
    ext = "jpg" if mode == "CMYK" else "png"
    p = write(img, tmp_path / f"x.{ext}")
    assert open_image(p).mode == "RGB"
    assert load_target(p, size=32).shape == (3, 32, 32)


def test_exif_rotated_jpeg_is_upright(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white: a landscape image
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    p = tmp_path / "r.jpg"
    img.save(p, exif=exif, quality=100)
    up = open_image(p)
    assert up.size == (20, 40)  # displayed portrait


def put(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.png", "does not exist"),
        (lambda d: d, "is a directory"),
        (lambda d: put(d / "empty.png", b""), "empty file"),
        (lambda d: put(d / "text.png", b"hello, not a picture"), "not a readable image"),
        (lambda d: write(Image.new("RGB", (1, 1)), d / "one.png"), "need at least"),
    ],
)
def test_bad_images_are_one_line_errors(tmp_path, make, message):
    with pytest.raises(ClipassoError, match=message) as info:
        load_target(make(tmp_path))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_is_refused(tmp_path, fmt):
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(buf, format=fmt)
    p = tmp_path / f"t.{fmt.lower()}"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ClipassoError, match="not a readable image"):
        load_target(p)


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = atomic_write_text(tmp_path / "f.txt", "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert [q.name for q in tmp_path.iterdir()] == ["f.txt"]


def test_save_png_round_trip(tmp_path):
    t = torch.rand(3, 8, 8)
    p = save_png(tmp_path / "x.png", t)
    back = np.asarray(Image.open(p), dtype=np.float32) / 255
    assert np.abs(back.transpose(2, 0, 1) - t.numpy()).max() <= 0.5 / 255 + 1e-6
