"""Test-wide settings: never reach the network; tiny models registered; the reference data in tests/reference/."""

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")

import shutil  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(__file__).resolve().parent / "reference" / "diffvg"  # diffvg renders; README.md there says how made


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def pytest_collection_modifyitems(config, items):
    """``gpu`` and ``browser`` tests skip, saying why, on a machine without CUDA or Chromium."""
    if any(item.get_closest_marker("gpu") for item in items):
        import torch

        if not torch.cuda.is_available():
            skip = pytest.mark.skip(reason="needs CUDA: torch sees no GPU on this machine")
            for item in items:
                if item.get_closest_marker("gpu"):
                    item.add_marker(skip)
    if any(item.get_closest_marker("browser") for item in items):
        if not any(shutil.which(name) for name in BROWSERS):
            skip = pytest.mark.skip(reason=f"needs Chromium: none of {', '.join(BROWSERS)} is on PATH")
            for item in items:
                if item.get_closest_marker("browser"):
                    item.add_marker(skip)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.fail(f"reference data missing: {REFERENCE} (it is part of the repository: restore tests/reference/)")
    return REFERENCE


@pytest.fixture(scope="session", autouse=True)
def tiny_models():
    try:
        from clipasso_pl.clip import register_tiny_models
    except ImportError:
        return
    register_tiny_models()


@pytest.fixture(scope="module")
def rn():
    """The tiny ResNet CLIP as a feature extractor (random weights)."""
    from clipasso_pl.clip import TINY_RN, ClipFeatures

    return ClipFeatures(TINY_RN, None)


@pytest.fixture(scope="module")
def vit():
    """The tiny ViT CLIP as a feature extractor (random weights)."""
    from clipasso_pl.clip import TINY_VIT, ClipFeatures

    return ClipFeatures(TINY_VIT, None)
