"""Loading frozen open_clip models: by tag, from a local checkpoint, or randomly initialised.

Weights never arrive silently from the network in tests: a tag (e.g. ``openai``) is first
looked up in the local caches (Hugging Face hub cache, open_clip's URL cache); only when
it is missing there and the network is allowed do we try to download it, after a short
reachability probe so that an unreachable hub fails in seconds instead of retrying for minutes.
"""

from __future__ import annotations

import os
import socket
import threading
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from ..config.architectures import OWN_CONFIGS, check_model_name
from ..errors import ClipassoError

TINY_RN = "tiny-rn"
TINY_VIT = "tiny-vit"

# Values of ``pretrained`` that mean "random weights" (Hydra passes null as None; CLI users may type the word).
_RANDOM = {None, "", "null", "none", "None", "random"}
_PROBE_TIMEOUT_S = 5.0


def register_tiny_models() -> None:
    """Register the tiny test architectures ``tiny-rn`` and ``tiny-vit`` with open_clip (idempotent)."""
    import open_clip

    if TINY_RN in open_clip.list_models() and TINY_VIT in open_clip.list_models():
        return
    open_clip.add_model_config(OWN_CONFIGS)


def is_random(pretrained: str | None) -> bool:
    return pretrained is None or (isinstance(pretrained, str) and pretrained.strip() in _RANDOM)


def _unreachable(model: str, pretrained: str, key: str, why: str) -> ClipassoError:
    return ClipassoError(
        f"could not load CLIP weights {model}/{pretrained} ({why}): pass {key}.pretrained=<local checkpoint path>, "
        f"or {key}.pretrained=null to check the pipeline with random weights"
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _reachable(url: str) -> bool:
    """One TCP connect with a short timeout: the hub clients would otherwise retry for minutes.

    The connect runs in a daemon thread joined with a deadline because the name lookup before it
    ignores socket timeouts (a resolver without network can block for tens of seconds).
    """
    parsed = urlparse(url)
    if not parsed.hostname:
        return False
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((parsed.hostname, port), timeout=_PROBE_TIMEOUT_S):
                result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=probe, name="clip-weights-probe", daemon=True)
    worker.start()
    worker.join(_PROBE_TIMEOUT_S + 1.0)
    return bool(result and result[0])


def _hf_endpoint() -> str:
    env = os.environ.get("HF_ENDPOINT")
    if env:
        return env
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT
    except Exception:  # pragma: no cover - hub client always installed with open_clip
        return "https://huggingface.co"


def _hf_candidates(hf_hub: str) -> tuple[str, list[str]]:
    """open_clip's 'org/name/filename' (or 'org/name/' for the default file) -> repo id and file names to try."""
    from open_clip.pretrained import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME, _get_safe_alternatives

    repo_id, filename = os.path.split(hf_hub)
    filename = filename or HF_WEIGHTS_NAME
    names = list(_get_safe_alternatives(filename)) + [filename]
    if filename == HF_WEIGHTS_NAME and HF_SAFE_WEIGHTS_NAME not in names:
        names.insert(0, HF_SAFE_WEIGHTS_NAME)
    return repo_id, names


def _cached_weights(cfg: dict) -> str | None:
    """The weights file of a pretrained tag if it is already on disk (no network)."""
    if cfg.get("file"):
        return cfg["file"]
    if cfg.get("hf_hub"):
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo_id, names = _hf_candidates(cfg["hf_hub"])
            for name in names:
                hit = try_to_load_from_cache(repo_id=repo_id, filename=name)
                if isinstance(hit, str) and os.path.isfile(hit):
                    return hit
    if cfg.get("url"):
        path = Path("~/.cache/clip").expanduser() / os.path.basename(cfg["url"])
        if path.is_file():
            return str(path)
    return None


def _download_weights(cfg: dict, model: str, pretrained: str, key: str) -> str:
    """Download a tag's weights once the host answered; every failure becomes one ClipassoError."""
    if cfg.get("hf_hub"):
        host = _hf_endpoint()
    else:
        host = cfg.get("url", "")
    if not _reachable(host):
        raise _unreachable(model, pretrained, key, f"offline: {urlparse(host).hostname or host} unreachable")
    # Past the probe the hub client's own timeouts (10 s per request by default) bound each call.
    from open_clip.pretrained import download_pretrained

    try:
        path = download_pretrained(cfg)
    except Exception as e:  # the hub client raises many kinds; all mean "not here"
        raise _unreachable(model, pretrained, key, f"download failed: {type(e).__name__}") from None
    if not path or not os.path.isfile(path):
        raise _unreachable(model, pretrained, key, "download failed")
    return path


def resolve_weights(model: str, pretrained: str, key: str = "clip") -> str:
    """A local weights file for ``pretrained`` (a path or an open_clip tag of ``model``)."""
    from open_clip import list_pretrained_tags_by_model
    from open_clip.pretrained import get_pretrained_cfg

    path = Path(pretrained).expanduser()
    if path.is_file():
        return str(path)
    cfg = get_pretrained_cfg(model, pretrained)
    if not cfg:
        if any(sep in pretrained for sep in ("/", "\\", ".")):
            raise ClipassoError(
                f"{key}.pretrained={pretrained}: no such checkpoint file; pass an existing path, an open_clip tag, "
                f"or {key}.pretrained=null for random weights"
            )
        tags = list_pretrained_tags_by_model(model)
        hint = f"known tags for {model}: {', '.join(tags)}" if tags else f"open_clip has no pretrained tags for {model}"
        raise ClipassoError(
            f"{key}.pretrained={pretrained} is neither a file nor a known tag ({hint}); "
            f"pass a local checkpoint path or {key}.pretrained=null"
        )
    cached = _cached_weights(cfg)
    if cached:
        return cached
    if _offline():
        raise _unreachable(model, pretrained, key, "offline")
    return _download_weights(cfg, model, pretrained, key)


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in zf.namelist())


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a plain state_dict, an open_clip checkpoint ({"state_dict"}, "module." keys),
    a safetensors file, or OpenAI's TorchScript release."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        elif _is_torchscript(path):
            state = torch.jit.load(path, map_location="cpu").state_dict()
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ClipassoError(f"cannot read CLIP checkpoint {path} ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ClipassoError(f"CLIP checkpoint {path} holds no state_dict: pass a model state_dict or an open_clip checkpoint")
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    for k in ("input_resolution", "context_length", "vocab_size"):  # OpenAI TorchScript metadata
        state.pop(k, None)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source: str, name: str) -> None:
    """Load a CLIP state_dict with open_clip's own format fixes; a mismatch is a user error."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    state = convert_state_dict(model, state)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for k in ("logit_scale", "logit_bias"):
        own = getattr(model, k, None)
        if k in state and own is not None and own.ndim != state[k].ndim:
            state[k] = state[k].reshape(own.shape)
    if "logit_bias" not in state and getattr(model, "logit_bias", None) is not None and "logit_scale" in state:
        state["logit_bias"] = torch.zeros_like(state["logit_scale"])
    state.pop("text.transformer.embeddings.position_ids", None)
    # Traced/TorchScript exports also save non-persistent buffers (e.g. the text attn_mask).
    persistent = set(model.state_dict())
    for buffer, _ in model.named_buffers():
        if buffer not in persistent:
            state.pop(buffer, None)
    try:
        resize_pos_embed(state, model)
        resize_text_pos_embed(state, model)
        missing, unexpected = model.load_state_dict(state, strict=False)
    except (RuntimeError, KeyError, ValueError) as e:
        first = " ".join(str(e).split())[:200]
        raise ClipassoError(f"CLIP checkpoint {source} does not fit model {name} ({first}): pass the matching model name") from None
    if missing or unexpected:
        parts = [f"{len(keys)} {what} keys, e.g. {', '.join(keys[:3])}" for what, keys in
                 (("missing", missing), ("unexpected", unexpected)) if keys]
        raise ClipassoError(f"CLIP checkpoint {source} does not fit model {name} ({'; '.join(parts)}): pass the matching model name")


RANDOM_WEIGHTS_SEED = 0


def _quiet_create(open_clip, model: str, force_quick_gelu: bool) -> nn.Module:
    """open_clip.create_model without its 'no pretrained weights' warning (we load weights ourselves)."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        return open_clip.create_model(model, pretrained=None, device="cpu", force_quick_gelu=force_quick_gelu,
                                      pretrained_image=False, pretrained_text=False)
    finally:
        root.setLevel(level)


def signal_preserving_init(clip: nn.Module) -> None:
    """Re-initialise a random ResNet tower so that its features carry signal.

    open_clip zero-initialises each bottleneck's last batch-norm scale and keeps PyTorch's
    default conv init, which shrinks activations about 3x per conv: in a random RN101 the
    layer3/layer4 losses are ~1e-7..1e-8 and 1 - cos of the embeddings is float noise, so
    a pipeline check with random weights would optimise nothing. He-normal convs and a
    residual scale of 0.5 keep every tapped layer at order-one magnitude. ViT towers are
    left as open_clip initialises them (their features already vary at order one).
    """
    visual = getattr(clip, "visual", None)
    if visual is None or not hasattr(visual, "layer1"):
        return
    for module in visual.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
    for name, param in visual.named_parameters():
        if name.endswith("bn3.weight"):
            nn.init.constant_(param, 0.5)


def load_clip_model(model: str, pretrained: str | None, device: str | torch.device = "cpu", key: str = "clip") -> nn.Module:
    """A frozen, eval-mode open_clip CLIP.

    model: an open_clip architecture name (``RN101-quickgelu``, ``ViT-B-32-quickgelu``, ``tiny-rn``...)
    pretrained: an open_clip tag (``openai``), a local checkpoint path, or None/"null" for random weights
    key: the config group named in error messages (``clip`` or ``init``)
    """
    import open_clip

    register_tiny_models()
    check_model_name(model, key)
    weights = None if is_random(pretrained) else resolve_weights(model, str(pretrained), key)
    tag_cfg = None
    if weights is not None and not Path(str(pretrained)).expanduser().is_file():
        from open_clip.pretrained import get_pretrained_cfg

        tag_cfg = get_pretrained_cfg(model, str(pretrained))
    # A tag trained with QuickGELU must run with it even if the name lacks the -quickgelu suffix.
    force_quick_gelu = bool(tag_cfg and tag_cfg.get("quick_gelu", False))
    # Random weights are the same on every run (fixed seed, global RNG untouched).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        clip = _quiet_create(open_clip, model, force_quick_gelu)
        if weights is None:
            signal_preserving_init(clip)
    if weights is not None:
        load_state_into(clip, read_state_dict(weights), weights, model)
    clip = clip.to(device).eval()
    clip.requires_grad_(False)
    return clip
