"""Test-wide settings: never reach the network; tiny models registered; shared paths."""

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference" / "diffvg"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.fail(f"reference data missing: {REFERENCE} (the repository must sit beside shared/)")
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
