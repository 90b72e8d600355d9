"""Checking a composed config: every key against its ``Spec`` in ``SCHEMA`` (``validate``), then the
rules between keys of each command (``RULES``). A bad value is one ClipassoError that names the key,
the value, what is allowed and where the key is documented."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ..errors import ClipassoError
from .architectures import check_model_name, vision_layers
from .schema import GROUPS, SCHEMA, doc_of
from .spec import Spec


def _show(value: Any) -> str:
    if isinstance(value, (ListConfig, DictConfig)):
        value = OmegaConf.to_container(value, resolve=False)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return str(value)


def _leaves(node: Any, schema: dict[str, Spec], prefix: str = ""):
    """(dotted key, raw node) for every leaf; an empty or null mapping, and a mapping where the
    schema wants a value, are leaves too."""
    for key in node:
        full = f"{prefix}{key}"
        child = node._get_node(key)
        if (isinstance(child, DictConfig) and full not in schema and not child._is_none()
                and not child._is_interpolation() and len(child)):
            yield from _leaves(child, schema, full + ".")
        else:
            yield full, child


def _bad(command: str, key: str, shown: str, spec: Spec, problem: str) -> ClipassoError:
    return ClipassoError(f"{key}={shown} {problem}: give {key} {spec.allowed()} (see {doc_of(command, key)})")


def validate(cfg: DictConfig, command: str = "sketch") -> DictConfig:
    """Check every key of a composed ``command`` config against SCHEMA; ints become floats where
    a number is wanted. Raises one ClipassoError for the first bad key; returns ``cfg``."""
    schema = SCHEMA[command]
    leaves = list(_leaves(cfg, schema))
    for key, node in leaves:
        if key in schema:
            continue
        if not any(k.startswith(key + ".") for k in schema) and not (key in GROUPS and _is_empty(node)):
            raise ClipassoError(f"{key} is not a key of clipasso-pl {command}: remove it (the keys are in "
                                f"configs/{command}.yaml and its groups; a new key needs a line in "
                                f"clipasso_pl/config/schema.py SCHEMA)")
        if not _is_empty(node):
            raise ClipassoError(f"{key}={_show(node._value())} is not allowed: {key} is a group of keys "
                                f"(see {doc_of(command, key + '.x')})")
    # Plain values first, interpolations after: a bad `steps` is reported as steps, not trainer.max_steps.
    for key, node in sorted(leaves, key=lambda kn: kn[1]._is_interpolation()):
        spec = schema.get(key)
        if spec is None:
            continue
        interpolated = node._is_interpolation()
        try:
            value = OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
        except Exception as e:  # an interpolation that does not resolve
            if _refers_to_key(node, {k for k, _ in leaves}):
                continue  # ${steps} when steps itself does not resolve: reported as steps
            raise ClipassoError(f"{key}={node._value()} does not resolve ({' '.join(str(e).split())[:200]}): "
                                f"give {key} {spec.allowed()} (see {doc_of(command, key)})") from None
        problem = spec.problem(value)
        if problem:
            shown = f"{node._value()} (= {_show(value)})" if interpolated else _show(value)
            raise _bad(command, key, shown, spec, problem)
        if not interpolated and spec.kind == "float" and isinstance(value, int):
            OmegaConf.update(cfg, key, float(value), merge=False)
        elif not interpolated and spec.kind == "float_list":
            OmegaConf.update(cfg, key, [float(v) for v in value], merge=False)
    for rule in RULES.get(command, ()):
        rule(cfg)
    return cfg


def _refers_to_key(node: Any, keys: set[str]) -> bool:
    """True when ``node`` is exactly ``${other.key}`` for a key of the config (checked on its own)."""
    raw = node._value()
    return isinstance(raw, str) and raw.startswith("${") and raw.endswith("}") and raw.count("$") == 1 \
        and raw[2:-1] in keys


def _is_empty(node: Any) -> bool:
    return node is None or node._is_none() or (isinstance(node, DictConfig) and len(node) == 0)


# -- rules between keys ------------------------------------------------------------------------
def _conv_weights_fit_the_model(cfg: DictConfig) -> None:
    """clip.conv_layer_weights has one weight per tapped layer of clip.model (from the model's config,
    no weights loaded): 5 for a ResNet (stem, layer1..layer4), the block count for a ViT."""
    layers = vision_layers(str(cfg.clip.model))
    if layers is None:
        check_model_name(str(cfg.clip.model), "clip")  # an unknown name: say so now, with the closest ones
        return
    want, names = ((5, "stem, layer1..layer4") if isinstance(layers, (list, tuple))
                   else (int(layers), f"block0..block{int(layers) - 1}"))
    weights = list(cfg.clip.conv_layer_weights)
    if len(weights) != want:
        raise ClipassoError(f"clip.conv_layer_weights={_show(weights)} has {len(weights)} entries but clip.model="
                            f"{cfg.clip.model} has {want} layers ({names}): give one weight per layer "
                            f"(see configs/clip/weights/)")


def _shard_in_range(cfg: DictConfig) -> None:
    if cfg.shard >= cfg.num_shards:
        raise ClipassoError(f"shard={cfg.shard} is outside 0..{cfg.num_shards - 1}: pass shard=<0..num_shards-1> "
                            "(see configs/evaluate.yaml)")


def _official_options_fit(cfg: DictConfig) -> None:
    """The options from the official code that need another key (README "Options from the official code")."""
    if cfg.clip_text_guide and not cfg.text_target:
        raise ClipassoError(f"clip_text_guide={cfg.clip_text_guide} needs a prompt: pass text_target=\"a cat\" "
                            "(or clip_text_guide=0)")
    if cfg.mask_object_attention and not (cfg.mask or cfg.mask_object):
        raise ClipassoError("mask_object_attention=true needs an object mask: pass mask=<mask image> or mask_object=true")
    if cfg.num_stages > 1 and cfg.path_svg:
        raise ClipassoError(f"path_svg with num_stages={cfg.num_stages} is not supported: start from the SVG with "
                            "num_stages=1")


def _no_single_sketch_keys(cfg: DictConfig) -> None:
    """evaluate sets the target, path_svg and resume of each job itself: refuse them rather than ignore them."""
    for key in ("target", "path_svg", "resume"):
        if cfg[key] is not None:
            raise ClipassoError(f"{key}={cfg[key]} is not used by clipasso-pl evaluate: it sketches every photo of data= "
                                f"at every level (remove {key}=; see configs/evaluate.yaml)")


def _scene_trainer_steps(cfg: DictConfig) -> None:
    """The scene passes each stage's step count to its Trainer: refuse trainer.max_steps rather than ignore it."""
    if cfg.trainer.max_steps != -1:
        raise ClipassoError(f"trainer.max_steps={cfg.trainer.max_steps} is not used by clipasso-pl scene: each stage runs "
                            "fidelity.*_steps or simplicity.steps steps (set those; see configs/scene.yaml)")


def _step_sizes_match_layers(cfg: DictConfig) -> None:
    s = cfg.simplicity
    for key in ("background_step_sizes", "foreground_step_sizes"):
        if len(s[key]) != len(s.step_layers):
            raise ClipassoError(f"simplicity.{key}={_show(s[key])} has {len(s[key])} entries but simplicity.step_layers="
                                f"{_show(s.step_layers)} has {len(s.step_layers)}: give one step size per layer "
                                "(see configs/scene.yaml)")


RULES = {
    "sketch": (_conv_weights_fit_the_model, _official_options_fit),
    "evaluate": (_conv_weights_fit_the_model, _shard_in_range, _official_options_fit, _no_single_sketch_keys),
    "scene": (_step_sizes_match_layers, _scene_trainer_steps),
}
