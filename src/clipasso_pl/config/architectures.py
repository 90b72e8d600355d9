"""The open_clip architectures by name, read from their JSON configs without importing open_clip
(or torch): what the config checks need before any model loads.

open_clip's own ``model_configs`` folder plus this package's (``clip/model_configs``: the tiny
test models) are exactly what ``open_clip.list_models()`` lists once the tiny models are
registered, so a name unknown here is unknown to the loader too.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
from pathlib import Path

from ..errors import ClipassoError

# The tiny test architectures' JSON files (registered with open_clip by clip.models).
OWN_CONFIGS = Path(__file__).resolve().parents[1] / "clip" / "model_configs"


def config_folders() -> list[Path]:
    """open_clip's ``model_configs`` (when it is installed) and ours."""
    spec = importlib.util.find_spec("open_clip")
    folders = [Path(p) / "model_configs" for p in (spec.submodule_search_locations or [])] if spec else []
    return [*folders, OWN_CONFIGS]


def architecture_names() -> list[str]:
    """Every architecture name, sorted: the names ``open_clip.list_models()`` gives."""
    return sorted({p.stem for folder in config_folders() if folder.is_dir() for p in folder.glob("*.json")})


def vision_layers(model: str):
    """``vision_cfg.layers`` of ``model``: a list (ResNet stages) or an int (ViT blocks); None when
    no config of that name exists."""
    for folder in config_folders():
        path = folder / f"{model}.json"
        if path.is_file():
            return json.loads(path.read_text()).get("vision_cfg", {}).get("layers")
    return None


def check_model_name(model: str, key: str = "clip") -> None:
    """Raise a ClipassoError naming the closest valid architectures when ``model`` is unknown."""
    names = architecture_names()
    if model in names:
        return
    close = difflib.get_close_matches(model, names, n=5, cutoff=0.4)
    hint = f"did you mean {', '.join(close)}?" if close else f"valid names include {', '.join(names[:8])}, ..."
    raise ClipassoError(f"unknown CLIP model {key}.model={model}: {hint} (open_clip.list_models() lists all)")
