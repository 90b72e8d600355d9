"""clipasso-pl: CLIP-guided vector sketching (CLIPasso, CLIPascene) with PyTorch Lightning and Hydra."""

from .errors import ClipassoError

__version__ = "0.1.0"
__all__ = ["ClipassoError", "sketch", "__version__"]


def sketch(*args, **kwargs):
    """Sketch one image: ``sketch("photo.png", strokes=16)``. See :func:`clipasso_pl.api.sketch`."""
    from .api import sketch as _sketch

    return _sketch(*args, **kwargs)
