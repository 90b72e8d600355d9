"""The key tables: every key of every command (``SCHEMA``), its ``Spec`` and where it is documented
(``doc_of``); the bench variants, whose names are the choices of ``bench.run``."""

from __future__ import annotations

from dataclasses import replace

from ..choices import (AUGMENTATIONS, CI_KINDS, CONV_LOSS_TYPES, INIT_MODES, INPAINT_METHODS, PARTS, PRECISIONS,
                       SQUARE_MODES)
from .spec import PATH, TARGET, AnyOf, Bool, Float, FloatList, Int, IntList, Spec, Str, StrList

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

# What every sketching command (`sketch`, `scene`) has, with the same meaning and range.
SHARED_RUN_KEYS = {
    **CLIP_KEYS, **INIT_KEYS, **RENDERER_KEYS, **LOGGER_KEYS, **TRAINER_KEYS, **AUGMENT_KEYS,
    "experiment": Str(null=True, num=True),
    "canvas": Int(ge=8),
    "half_width": Float(gt=0),
    "seeds": SEEDS,
    "lr": Float(gt=0),
}

# The settings of a sketch run (`sketch`; `evaluate` and `bench` compose sketch.yaml).
SKETCH_RUN_KEYS = {
    **SHARED_RUN_KEYS, **CLIP_WEIGHT_KEYS, **CALLBACK_KEYS,
    "fix_scale": Bool(),
    "steps": Int(ge=1),
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
        **SHARED_RUN_KEYS,
        "target": PATH,
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
        "combined_size": Int(ge=8),
        "combined_width_scale": Float(gt=0),
        "strokes": Int(ge=1),
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

# The config groups: a key under one is documented in configs/<group>/.
GROUPS = ("clip", "init", "renderer", "logger", "trainer", "callbacks", "augment", "eval", "preset")


def doc_of(command: str, key: str) -> str:
    """Where ``key`` of ``command`` is documented: its group folder or the command's YAML (and README)."""
    if ((command == "bench" and not key.startswith("bench."))  # bench.yaml and evaluate.yaml compose sketch.yaml
            or (command == "evaluate" and key not in EVALUATE_OWN_KEYS)):
        return doc_of("sketch", key)
    spec = SCHEMA[command].get(key)
    if spec is not None and spec.doc:
        return spec.doc
    group = key.split(".", 1)[0]
    if group in GROUPS and "." in key:
        return f"configs/{group}/"
    return f"configs/{command}.yaml"
