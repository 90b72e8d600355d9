"""Where the Hydra configs live, composing them from Python, and their schema (every key's type and range)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from .choices import (AUGMENTATIONS, CI_KINDS, CONV_LOSS_TYPES, INIT_MODES, INPAINT_METHODS, PARTS, PRECISIONS,
                      SQUARE_MODES)
from .errors import ClipassoError

_PACKAGE_CONFIGS = Path(__file__).resolve().parent / "configs"  # wheel install (force-included)
_REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"  # source checkout / editable install


def config_dir() -> Path:
    """The directory holding ``sketch.yaml`` and the config groups."""
    for d in (_REPO_CONFIGS, _PACKAGE_CONFIGS):
        if (d / "sketch.yaml").is_file():
            return d
    raise FileNotFoundError(f"clipasso-pl configs not found in {_REPO_CONFIGS} or {_PACKAGE_CONFIGS}")


def override_value(value: Any) -> str:
    """A Python value as a Hydra override value: lists, None, bools, numbers, strings."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    return text if all(c.isalnum() or c in "-_./~" for c in text) else "'" + text.replace("'", "\\'") + "'"


def compose(config_name: str = "sketch", overrides: list[str] | None = None, check: bool = True,
            **values: Any) -> DictConfig:
    """Compose a config as the CLI would, with overrides as strings and/or keyword values, and
    check it against SCHEMA (``check=False`` skips that).

    ``compose("sketch", ["preset=smoke"], strokes=8, seeds=[0])``
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    all_overrides = list(overrides or []) + [f"{k}={override_value(v)}" for k, v in values.items()]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=all_overrides)
    return validate(cfg, config_name) if check and config_name in SCHEMA else cfg


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def expand_images(images: str) -> str:
    """The ``images`` of a sweep as the comma-separated targets Hydra sweeps over.

    ``images`` is a comma-separated list of targets (paths or ``skimage:<name>``), or a
    folder, which stands for every image file in it (sorted).
    """
    folder = Path(str(images))
    if "," not in str(images) and folder.is_dir():
        files = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"images={folder} holds no image files")
        return ",".join(files)
    return str(images)


if not OmegaConf.has_resolver("images"):
    OmegaConf.register_new_resolver("images", expand_images)


# --------------------------------------------------------------------------------------------
# The schema: every key of every command, its type and range, and where it is documented.
#
# Defaults live in the YAML files; the schema says what a value may be. Adding a key is one
# line in the command's table below (a YAML key without an entry fails every compose, so a
# missing entry shows at once). ``validate`` runs on every composed config (``compose``, the
# CLI before Hydra starts, ``run_sketch``/``run_scene``/``run_evaluate`` on saved or built
# configs) and raises one ClipassoError naming the key, the value, what is allowed and where
# the key is documented.
# --------------------------------------------------------------------------------------------

_KINDS = ("int", "float", "bool", "str", "int_list", "float_list", "str_list", "any")


@dataclass(frozen=True)
class Spec:
    """What one config value may be. Numbers: ``ge``/``gt``/``le``/``lt`` bounds and (floats)
    ``finite``; strings: ``choices``; lists: ``min_len``, ``distinct`` and the bounds or
    choices of their items; ``null``: None allowed; ``num``: a string key that also takes a
    number (Hydra parses ``logger.version=3`` as an int); ``options`` (kind ``any``): the
    alternatives, the first that fits wins. ``doc``: where the key is documented, when not in
    the command's YAML or its group folder."""

    kind: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    finite: bool = True
    choices: tuple | None = None
    null: bool = False
    num: bool = False
    min_len: int = 0
    distinct: bool = False
    options: tuple = ()
    doc: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"Spec kind {self.kind!r} is not one of {_KINDS}")

    # -- what it allows, in words
    def bounds(self) -> str:
        parts = [f"{op} {v:g}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                 if v is not None]
        return " and ".join(parts)

    def allowed(self) -> str:
        item = {"int": "an integer", "float": "a finite number" if self.finite else "a number", "bool": "true or false",
                "str": "a string", "int_list": "a list of integers", "float_list": "a list of numbers",
                "str_list": "a list of strings"}.get(self.kind)
        if self.kind == "any":
            text = " or ".join(o.allowed() for o in self.options)
        else:
            text = item
            if self.choices:
                text = ("one of " if self.kind == "str" else "a list of ") + ", ".join(map(str, self.choices))
            if self.bounds():
                text += (" " if self.kind in ("int", "float") else ", each ") + self.bounds()
            if self.min_len:
                text += f", at least {self.min_len} long"
            if self.distinct:
                text += ", no repeats"
        return text + (" or null" if self.null else "")

    # -- the check: None when ``value`` fits, else what is wrong with it
    def problem(self, value: Any) -> str | None:
        if value is None:
            return None if self.null else "is null"
        if self.kind == "any":
            return None if any(o.problem(value) is None for o in self.options) else "does not fit"
        if self.kind in ("int", "float", "bool", "str"):
            return self._scalar(value)
        if not isinstance(value, (list, tuple, ListConfig)):
            return "is not a list"
        items = list(value)
        item = Spec(self.kind[: -len("_list")], ge=self.ge, gt=self.gt, le=self.le, lt=self.lt, finite=self.finite,
                    choices=self.choices)
        for v in items:
            if v is None or item._scalar(v):
                return f"has the entry {v!r}, which {item._scalar(v) if v is not None else 'is null'}"
        if len(items) < self.min_len:
            return "is empty" if not items else f"has {len(items)} entries"
        if self.distinct and len(set(items)) != len(items):
            return "repeats an entry"
        return None

    def _scalar(self, value: Any) -> str | None:
        if self.kind == "bool":
            return None if isinstance(value, bool) else "is not true/false"
        if self.kind == "str":
            if isinstance(value, bool) or not isinstance(value, (str, int, float) if self.num else str):
                return "is not a string"
            if self.choices and value not in self.choices:
                return "is not one of the choices"
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float) if self.kind == "float" else int):
            return "is not an integer" if self.kind == "int" else "is not a number"
        if self.kind == "float" and self.finite and not math.isfinite(value):
            return "is not finite"
        # Written as violations, so that NaN (finite=False) passes the bounds.
        if ((self.ge is not None and value < self.ge) or (self.gt is not None and value <= self.gt)
                or (self.le is not None and value > self.le) or (self.lt is not None and value >= self.lt)):
            return "is out of range"
        return None

    # -- values a test can try: one of the wrong type, one out of range (None when there is none)
    def wrong_type(self) -> str:
        if self.kind in ("int", "float", "bool") or self.kind.endswith("_list"):
            return "abc"
        if self.kind == "str" and self.choices:
            return "[1,2]"
        return "{a:1}" if self.kind == "any" or self.num else "[1,2]"

    def out_of_range(self) -> str | None:
        if self.kind == "any":
            return next((o.out_of_range() for o in self.options if o.out_of_range() is not None), None)
        if self.choices:
            bad = "no_such_choice"
            return bad if self.kind == "str" else f"[{bad}]"
        bound = next(((v - 1 if op == "ge" else v) for op, v in (("ge", self.ge), ("gt", self.gt)) if v is not None), None)
        if bound is None:
            bound = next(((v + 1 if op == "le" else v) for op, v in (("le", self.le), ("lt", self.lt)) if v is not None),
                         None)
        if bound is None:
            return None
        text = repr(int(bound)) if self.kind.startswith("int") else repr(float(bound))
        return f"[{text}]" if self.kind.endswith("_list") else text


def Int(ge=None, gt=None, le=None, lt=None, **kw) -> Spec:
    return Spec("int", ge=ge, gt=gt, le=le, lt=lt, **kw)


def Float(ge=None, gt=None, le=None, lt=None, **kw) -> Spec:
    return Spec("float", ge=ge, gt=gt, le=le, lt=lt, **kw)


def Bool(**kw) -> Spec:
    return Spec("bool", **kw)


def Str(choices=None, **kw) -> Spec:
    return Spec("str", choices=tuple(choices) if choices else None, **kw)


def IntList(ge=None, gt=None, le=None, lt=None, **kw) -> Spec:
    return Spec("int_list", ge=ge, gt=gt, le=le, lt=lt, **kw)


def FloatList(ge=None, gt=None, le=None, lt=None, **kw) -> Spec:
    return Spec("float_list", ge=ge, gt=gt, le=le, lt=lt, **kw)


def StrList(choices=None, **kw) -> Spec:
    return Spec("str_list", choices=tuple(choices) if choices else None, **kw)


def AnyOf(*options: Spec, **kw) -> Spec:
    return Spec("any", options=options, **kw)


PATH = Str(null=True, num=True)  # a file or folder path; null: the documented default
TARGET = Str()  # a ``_target_``: the class or function Hydra instantiates


# The config groups, shared by the commands that use them (documented in configs/<group>/).
CLIP_KEYS = {
    "clip.model": Str(num=True),  # any open_clip architecture (open_clip.list_models())
    "clip.pretrained": PATH,
    "clip.conv_loss_type": Str(CONV_LOSS_TYPES),
}
# The sketch loss's weights of that CLIP (configs/clip/weights/; the scene picks its blocks by `layers`).
CLIP_WEIGHT_KEYS = {
    "clip.conv_layer_weights": FloatList(ge=0, min_len=1, doc="configs/clip/weights/"),
    # NaN is accepted on purpose: clip.fc_weight=nan is how the non-finite step guard is exercised.
    "clip.fc_weight": Float(ge=0, finite=False, doc="configs/clip/weights/"),
}
INIT_KEYS = {
    "init._target_": TARGET,
    "init.mode": Str(INIT_MODES),
    "init.model": Str(num=True),
    "init.pretrained": PATH,
    "init.temperature": Float(gt=0),
    "init.radius": Float(ge=0),
    "init.xdog_normalized_input": Bool(),
}
RENDERER_KEYS = {"renderer._target_": TARGET}
LOGGER_KEYS = {
    "logger._target_": TARGET,
    "logger.project": Str(num=True),
    "logger.name": Str(null=True, num=True),
    "logger.group": Str(null=True, num=True),
    "logger.job_type": Str(num=True),
    "logger.tags": StrList(),
    "logger.version": Str(null=True, num=True),
}
TRAINER_KEYS = {
    "trainer._target_": TARGET,
    "trainer.accelerator": Str(("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu", "xla")),
    "trainer.devices": AnyOf(Int(ge=-1), IntList(ge=0, min_len=1), Str(("auto",))),
    "trainer.max_steps": Int(ge=-1),
    "trainer.max_epochs": Int(ge=-1, null=True),
    "trainer.log_every_n_steps": Int(ge=1),
    "trainer.enable_checkpointing": Bool(),
    "trainer.enable_model_summary": Bool(),
    "trainer.num_sanity_val_steps": Int(ge=-1),
    "trainer.use_distributed_sampler": Bool(),
    "trainer.deterministic": AnyOf(Bool(), Str(("warn",))),
    "trainer.strategy": Str(num=True),
    "trainer.num_nodes": Int(ge=1),
    "trainer.precision": Str(PRECISIONS),
}
CALLBACK_KEYS = {
    "callbacks.saliency_init._target_": TARGET,
    "callbacks.layer_loss_logger._target_": TARGET,
    "callbacks.layer_loss_logger.log_interval": Int(ge=1),
    "callbacks.snapshot._target_": TARGET,
    "callbacks.snapshot.save_interval": Int(ge=0),
    "callbacks.best._target_": TARGET,
    "callbacks.early_stopping._target_": TARGET,
    "callbacks.early_stopping.min_delta": Float(ge=0),
    "callbacks.early_stopping.patience": Int(ge=1),
    "callbacks.progress._target_": TARGET,
    "callbacks.progress.enabled": Bool(),
    "callbacks.progress.interval": Int(ge=0),
    "callbacks.checkpoint._target_": TARGET,
    "callbacks.checkpoint.checkpoint_interval": Int(ge=0),
    "callbacks.wandb_media._target_": TARGET,
    "callbacks.wandb_media.log_image_interval": Int(ge=0),
}
AUGMENT_KEYS = {
    "augment._target_": TARGET,
    "augment.num_augs": Int(ge=0),
    "augment.distortion_scale": Float(ge=0, le=1),
    "augment.crop_scale": Float(gt=0, le=1),
    "augment.size": Int(ge=8),
    "augment.augmentations": Str(AUGMENTATIONS),
}
SEEDS = IntList(ge=0, min_len=1, distinct=True)

# The options from the official code and the speed switches: configs/sketch_options.yaml, part of
# sketch.yaml (and so of evaluate.yaml and bench.yaml, which compose it).
SKETCH_OPTION_KEYS = {k: replace(v, doc="configs/sketch_options.yaml") for k, v in {
    "num_segments": Int(ge=1),
    "control_points_per_seg": Int(ge=2, le=4),
    "force_sparse": Bool(),
    "color_lr": Float(gt=0),
    "color_vars_threshold": Float(ge=0, le=1),
    "num_stages": Int(ge=1),
    "mask": PATH,
    "mask_object": Bool(),
    "mask_object_attention": Bool(),
    "text_target": Str(null=True, num=True),
    "clip_text_guide": Float(ge=0),
    "text_clip.model": Str(num=True),
    "text_clip.pretrained": PATH,
    "lr_scheduler": Bool(),
    "lr_end": Float(ge=0),
    "lr_warmup_steps": Int(ge=0),
    "lr_warmup_start": Float(ge=0),
    "official_padding": Bool(),
    "progress": Bool(),
    # Speed switches (README "The GPU path").
    "precision": Str(PRECISIONS),
    "tf32": Bool(null=True),
    "channels_last": Bool(),
    "compile_clip": AnyOf(Bool(), Str()),  # true (inductor) or a torch.compile backend name, checked when applied
    "compile": Str(("none", "step")),  # step: the whole training step as one graph (module.step_terms)
    "compile_backend": Str(null=True),  # a torch.compile backend name, checked when applied; null: inductor
    "cudnn_benchmark": Bool(),
}.items()}

# The settings of a sketch run (`sketch`; `evaluate` and `bench` compose sketch.yaml).
SKETCH_RUN_KEYS = {
    **CLIP_KEYS, **CLIP_WEIGHT_KEYS, **INIT_KEYS, **RENDERER_KEYS, **LOGGER_KEYS, **TRAINER_KEYS, **CALLBACK_KEYS,
    **AUGMENT_KEYS,
    "experiment": Str(null=True, num=True),
    "fix_scale": Bool(),
    "canvas": Int(ge=8),
    "half_width": Float(gt=0),
    "seeds": SEEDS,
    "steps": Int(ge=1),
    "lr": Float(gt=0),
    "eval_interval": Int(ge=0),
    "save_interval": Int(ge=0),
    "log_image_interval": Int(ge=0),
    "checkpoint_interval": Int(ge=0),
    "max_nonfinite": Int(ge=1),
    **SKETCH_OPTION_KEYS,
}

SCHEMA: dict[str, dict[str, Spec]] = {
    "sketch": {
        **SKETCH_RUN_KEYS,
        "target": PATH,
        "images": Str(num=True),
        "strokes": Int(ge=1),
        "path_svg": PATH,
        "resume": PATH,
    },
    "evaluate": {  # evaluate.yaml composes sketch.yaml; target, strokes, path_svg and resume are set per job
        "data": PATH,
        "levels": IntList(ge=1, min_len=1, distinct=True),
        "sketches": PATH,
        "shard": Int(ge=0),
        "num_shards": Int(ge=1),
        "eval.classifier": Str(num=True),
        "eval.pretrained": PATH,
        "eval.templates": StrList(min_len=1),
        "eval.ensemble": Bool(),
        "eval.ci": Str(CI_KINDS),
        "eval.ci_level": Float(gt=0, lt=1),
        "eval.bootstrap_resamples": Int(ge=1),
        "eval.random_baseline": Bool(),
        "eval.per_seed": Bool(),
        "eval.examples": Int(ge=0),
        "eval.batch_size": Int(ge=1),
        "eval.device": Str(),
        "eval.protocol.classes": Int(ge=1, null=True),
        "eval.protocol.photos_per_class": Int(ge=1, null=True),
        "eval.paper": Str(null=True),
    },  # (the sketch keys are added below)
    "scene": {
        **CLIP_KEYS, **INIT_KEYS, **RENDERER_KEYS, **LOGGER_KEYS, **TRAINER_KEYS, **AUGMENT_KEYS,
        "target": PATH,
        "experiment": Str(null=True, num=True),
        "mask": PATH,
        "background": PATH,
        "mask_model": Str(null=True),
        "parts": StrList(PARTS, min_len=1, distinct=True),
        "square": Str(SQUARE_MODES),
        "max_size": Int(ge=8),
        "dilation": Int(ge=1),
        "inpaint_radius": Int(ge=0),
        "inpaint_method": Str(INPAINT_METHODS),
        "lama_weights": PATH,
        "resize_obj": Bool(),
        "object_fraction": Float(gt=0, le=1),
        "canvas": Int(ge=8),
        "combined_size": Int(ge=8),
        "combined_width_scale": Float(gt=0),
        "strokes": Int(ge=1),
        "half_width": Float(gt=0),
        "seeds": SEEDS,
        "lr": Float(gt=0),
        "width_lr": Float(gt=0),
        "hidden": Int(ge=1),
        "offset_scale": Float(ge=0),
        "layers": IntList(ge=0, min_len=1, distinct=True),
        "levels": Int(ge=1),
        "object_anchor_layer": Int(ge=0),
        "object_anchor_weight": Float(ge=0),
        "gradnorm": Bool(),
        "fidelity.background_steps": Int(ge=1),
        "fidelity.foreground_steps": Int(ge=1),
        "fidelity.foreground_steps_deep": Int(ge=1),
        "fidelity.deep_layer": Int(ge=0),
        "fidelity.eval_start": Int(ge=0),
        "fidelity.eval_interval": Int(ge=1),
        "simplicity.steps": Int(ge=1),
        "simplicity.eval_start": Int(ge=0),
        "simplicity.eval_interval": Int(ge=1),
        "simplicity.temperature": Float(gt=0),
        "simplicity.keep_threshold": Float(gt=0, lt=1),
        "simplicity.halvings": Int(ge=0),
        "simplicity.step_layers": IntList(ge=0, min_len=1),
        "simplicity.background_step_sizes": FloatList(gt=0, min_len=1),
        "simplicity.foreground_step_sizes": FloatList(gt=0, min_len=1),
        "simplicity.nested": Bool(),
        "cells": AnyOf(Str(num=True), StrList(), null=True),
        "matrix_dir": PATH,
        "save_interval": Int(ge=0),
        "tile_size": Int(ge=8),
    },
}
EVALUATE_OWN_KEYS = tuple(SCHEMA["evaluate"])
SCHEMA["evaluate"] = {**SCHEMA["sketch"], **SCHEMA["evaluate"]}

# `clipasso-pl bench`: the sketch keys (its config composes sketch.yaml) and its own bench.* keys.
# A variant names the speed keys it sets (fp32 is the reference); bench.run picks variants by name.
BENCH_VARIANTS = {
    "fp32": {},
    "bf16": {"precision": "bf16-mixed"},
    "tf32": {"tf32": True},
    "channels_last": {"channels_last": True},
    "compile": {"compile_clip": True},
    "cudnn_benchmark": {"cudnn_benchmark": True},
    "bf16_compile": {"precision": "bf16-mixed", "compile_clip": True},
    "compile_step": {"compile": "step"},
    "bf16_compile_step": {"precision": "bf16-mixed", "compile": "step"},
}
SCHEMA["bench"] = {
    **SCHEMA["sketch"],
    "bench.models": StrList(min_len=1),
    "bench.num_seeds": IntList(ge=1, min_len=1),
    "bench.run": StrList(tuple(BENCH_VARIANTS), min_len=1),
    "bench.cuda_only": StrList(tuple(BENCH_VARIANTS)),
    "bench.loops": StrList(("phases", "bare", "trainer"), min_len=1, distinct=True),
    "bench.warmup": Int(ge=0),
    "bench.repeats": Int(ge=1),
    "bench.device": Str(("auto", "cpu", "cuda")),
    "bench.threads": Int(ge=1, null=True),
    "bench.out": Str(num=True),
}

_GROUPS = ("clip", "init", "renderer", "logger", "trainer", "callbacks", "augment", "eval", "preset")


def doc_of(command: str, key: str) -> str:
    """Where ``key`` of ``command`` is documented: its group folder or the command's YAML (and README)."""
    if ((command == "bench" and not key.startswith("bench."))  # bench.yaml and evaluate.yaml compose sketch.yaml
            or (command == "evaluate" and key not in EVALUATE_OWN_KEYS)):
        return doc_of("sketch", key)
    spec = SCHEMA[command].get(key)
    if spec is not None and spec.doc:
        return spec.doc
    group = key.split(".", 1)[0]
    if group in _GROUPS and "." in key:
        return f"configs/{group}/"
    return f"configs/{command}.yaml"


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
        if not any(k.startswith(key + ".") for k in schema) and not (key in _GROUPS and _is_empty(node)):
            raise ClipassoError(f"{key} is not a key of clipasso-pl {command}: remove it (the keys are in "
                                f"configs/{command}.yaml and its groups; a new key needs a line in "
                                f"clipasso_pl/config.py SCHEMA)")
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
def _vision_layers(model: str):
    """``vision_cfg.layers`` of an open_clip architecture, read from its JSON (open_clip's or ours) without
    importing open_clip; None when there is no such file (then loading the model says what is wrong)."""
    import importlib.util
    import json

    spec = importlib.util.find_spec("open_clip")
    folders = [Path(p) / "model_configs" for p in (spec.submodule_search_locations or [])] if spec else []
    folders.append(Path(__file__).resolve().parent / "clip" / "model_configs")
    for folder in folders:
        path = folder / f"{model}.json"
        if path.is_file():
            return json.loads(path.read_text()).get("vision_cfg", {}).get("layers")
    return None


def _conv_weights_fit_the_model(cfg: DictConfig) -> None:
    """clip.conv_layer_weights has one weight per tapped layer of clip.model (from the model's config,
    no weights loaded): 5 for a ResNet (stem, layer1..layer4), the block count for a ViT."""
    layers = _vision_layers(str(cfg.clip.model))
    if layers is None:
        from .clip.models import check_model_name

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
