"""From the page's form to the CLI's runs: configs, run folders and the work of each job (no Gradio here).

Every job writes the run directory the CLI writes (``api.run_sketch`` / ``scene.driver.run_scene``,
config.yaml with the uploaded files copied in), under the app's run folder, so
``clipasso-pl sketch resume=<run>`` and ``clipasso-pl report`` work on it.
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import DictConfig

from ..runs import new_run_dir
from ..config import compose, config_dir
from ..errors import ClipassoError
from .jobs import Job

STROKE_CHOICES = (4, 8, 16, 32)
ABSTRACTION_STROKES = (4, 8, 16, 32)
PRESETS = ("app default", "paper defaults", "quick preview", "official")
_COMPOSE = threading.Lock()  # Hydra's compose API keeps global state


def clip_groups() -> dict[str, dict]:
    """The ``clip`` config group: option name -> its YAML (model, pretrained, ...) with its sketch-loss weights
    from ``clip/weights/`` (conv_layer_weights, fc_weight)."""
    groups = {}
    for p in sorted((config_dir() / "clip").glob("*.yaml")):
        weights = p.parent / "weights" / p.name
        groups[p.stem] = {**yaml.safe_load(p.read_text()), **(yaml.safe_load(weights.read_text()) if weights.is_file() else {})}
    return groups


def clip_group_of(model: str) -> str:
    return next((name for name, c in clip_groups().items() if c["model"] == model), "rn101")


def weights_text(pretrained) -> str:
    return "random" if pretrained in (None, "", "null") else str(pretrained)


@dataclass
class AppSettings:
    """The app's command line: its run folder, upload limit, and the overrides every job starts from."""

    runs: Path
    overrides: list[str] = field(default_factory=list)
    max_upload_mb: float = 20.0

    @property
    def scene_overrides(self) -> list[str]:
        """``preset=`` goes to every tab; ``scene.<key>=v`` to scene runs only (as ``<key>=v``)."""
        out = [o for o in self.overrides if o.startswith("preset=")]
        return out + [o[len("scene."):] for o in self.overrides if o.startswith("scene.")]

    @property
    def sketch_overrides(self) -> list[str]:
        return [o for o in self.overrides if not o.startswith("scene.")]

    def compose(self, name: str, overrides: list[str], **values) -> DictConfig:
        """The config as the CLI composes it; a bad key or value is one ClipassoError line, as in the CLI."""
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        with _COMPOSE:
            try:
                return compose(name, overrides, **values)
            except (HydraException, OmegaConfBaseException) as e:
                raise ClipassoError(" ".join(str(e).split()) + f" (see the keys in configs/{name}.yaml)") from None

    def base(self) -> DictConfig:
        return self.compose("sketch", self.sketch_overrides)

    def form_defaults(self) -> dict:
        """The form's values of the app default: the sketch config of the app's overrides."""
        cfg = self.base()
        return {"strokes": int(cfg.strokes), "seeds": ", ".join(str(s) for s in cfg.seeds), "steps": int(cfg.steps),
                "clip_model": clip_group_of(cfg.clip.model), "clip_weights": weights_text(cfg.clip.pretrained),
                "num_segments": int(cfg.num_segments)}

    def preset_values(self, preset: str) -> dict:
        """The form's values for a preset (the controls it sets)."""
        values = self.form_defaults()
        if preset in ("paper defaults", "official"):
            values.update(strokes=16, seeds="0, 1000, 2000", steps=2001, clip_model="rn101", clip_weights="openai",
                          num_segments=1)
        elif preset == "quick preview":
            values.update(strokes=16, seeds="0", steps=201)
        return values

    def check_upload_size(self, path: str | Path, what: str) -> None:
        size = Path(path).stat().st_size
        if size > self.max_upload_mb * 2**20:
            raise ClipassoError(f"{what} is {size / 2**20:.1f} MB, above the app's limit of {self.max_upload_mb:g} MB: "
                                "upload a smaller file (or start the app with --max-upload-mb)")


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in str(text).replace(",", " ").split()]
    except ValueError:
        seeds = []
    if not seeds:
        raise ClipassoError(f"seeds '{text}' is not a list of whole numbers: write e.g. 0, 1000, 2000")
    return seeds


def parse_int(value, what: str, low: int = 1) -> int:
    try:
        number = int(float(value))
    except (TypeError, ValueError):
        raise ClipassoError(f"{what} '{value}' is not a whole number: enter one (at least {low})") from None
    if number < low or number != float(value):
        raise ClipassoError(f"{what} is {value}: enter a whole number of at least {low}")
    return number


@dataclass
class SketchForm:
    """The Sketch tab's choices."""

    photo: str | None
    mask: str | None = None
    mask_object: bool = False
    preset: str = "app default"
    strokes: object = 16
    seeds: str = "0"
    steps: object = 20
    clip_model: str = "rn101"
    clip_weights: str = "openai"
    mask_object_attention: bool = False
    text_target: str = ""
    text_weight: float = 0.0
    force_sparse: bool = False
    num_segments: object = 1

    def overrides(self, settings: AppSettings) -> tuple[list[str], dict]:
        """(Hydra overrides, config values) of this form on top of the app's overrides."""
        overrides = list(settings.sketch_overrides)
        if self.preset == "official":  # replaces the app's preset (Hydra takes one per group)
            overrides = [o for o in overrides if not o.startswith("preset=")] + ["preset=official"]
        group = clip_groups().get(self.clip_model)
        if group is None:
            raise ClipassoError(f"CLIP model '{self.clip_model}' is not one of {', '.join(clip_groups())}")
        weights = (self.clip_weights or "").strip()
        values = {
            "strokes": parse_int(self.strokes, "strokes"), "seeds": parse_seeds(self.seeds),
            "steps": parse_int(self.steps, "steps"), "num_segments": parse_int(self.num_segments, "num_segments"),
            "clip.model": group["model"], "clip.conv_layer_weights": group["conv_layer_weights"],
            "clip.fc_weight": group["fc_weight"],
            "clip.pretrained": None if weights.lower() in ("", "random", "none", "null") else weights,
            "mask_object": bool(self.mask_object), "mask_object_attention": bool(self.mask_object_attention),
            "force_sparse": bool(self.force_sparse),
        }
        text = (self.text_target or "").strip()
        if text and float(self.text_weight or 0) > 0:
            values.update(text_target=text, clip_text_guide=float(self.text_weight))
        return overrides, values


def check_sketch_inputs(settings: AppSettings, photo: str | None, mask: str | None, mask_object: bool):
    """The CLI's checks of a target and its mask (images.py, masking.py), on the uploads: the prepared
    target [3, 224, 224] on success, else a ClipassoError."""
    from ..sketch_target import load_sketch_target

    if not photo:
        raise ClipassoError("no photo: upload a PNG or JPEG photo first")
    settings.check_upload_size(photo, "the photo")
    if mask:
        settings.check_upload_size(mask, "the mask")
    return load_sketch_target(photo, size=224, mask=mask or None, mask_object=bool(mask_object)).image


def keep_upload(path: str | None, folder: Path, stem: str) -> str | None:
    """Copy an upload into the run's folder (Gradio's temporary copy may go away; config.yaml names this one)."""
    if not path:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / (stem + Path(path).suffix.lower())
    shutil.copyfile(path, dest)
    return str(dest)


def hide_uploads(job: Job, *paths: str | None) -> None:
    """Error lines name an upload by its file name, not by the server's temporary path."""
    for p in paths:
        if p:
            job.hide[str(p)] = Path(p).name


def sketch_work(settings: AppSettings, form: SketchForm, run_dir: Path):
    """The work of a Sketch job: one ``run_sketch`` into ``run_dir``, watched."""
    from ..api import run_sketch

    def work(job: Job):
        overrides, values = form.overrides(settings)
        check_sketch_inputs(settings, form.photo, form.mask, form.mask_object)
        photo = keep_upload(form.photo, run_dir / "uploads", "photo")
        mask = keep_upload(form.mask, run_dir / "uploads", "mask")
        hide_uploads(job, form.photo, form.mask, photo, mask)
        cfg = settings.compose("sketch", overrides, target=photo, mask=mask, **values)
        return run_sketch(cfg, run_dir, callbacks=[job.watcher])

    return work


def abstraction_work(settings: AppSettings, form: SketchForm, job_dir: Path, counts=ABSTRACTION_STROKES):
    """One photo at each stroke count, one run each (``job_dir/strokes<n>``), one after the other."""
    from ..api import run_sketch

    def work(job: Job):
        check_sketch_inputs(settings, form.photo, form.mask, form.mask_object)
        photo = keep_upload(form.photo, job_dir / "uploads", "photo")
        mask = keep_upload(form.mask, job_dir / "uploads", "mask")
        hide_uploads(job, form.photo, form.mask, photo, mask)
        results = {}
        for n in counts:
            if job.stopped:
                break
            form.strokes = n
            overrides, values = form.overrides(settings)
            cfg = settings.compose("sketch", overrides, target=photo, mask=mask, **values)
            watcher = job.new_watcher()
            job.current = n
            results[n] = run_sketch(cfg, job_dir / f"strokes{n}", callbacks=[watcher])
        return results

    return work


def scene_work(settings: AppSettings, photo: str | None, mask: str | None, root: Path):
    """The scene matrix of ``photo`` (RGBA, or with ``mask``) into ``root`` with ``run_scene``."""
    from ..images import open_image_rgba
    from ..scene.driver import run_scene

    def work(job: Job):
        if not photo:
            raise ClipassoError("no photo: upload a scene photo (RGBA with the object opaque, or with a mask)")
        settings.check_upload_size(photo, "the photo")
        open_image_rgba(photo, "photo")
        if mask:
            settings.check_upload_size(mask, "the mask")
        kept, kept_mask = keep_upload(photo, root / "uploads", "photo"), keep_upload(mask, root / "uploads", "mask")
        hide_uploads(job, photo, mask, kept, kept_mask)
        cfg = settings.compose("scene", settings.scene_overrides, target=kept, mask=kept_mask)
        return run_scene(cfg, root, callbacks=[job.watcher])

    return work


def scene_shape(settings: AppSettings) -> tuple[list[int], int, int]:
    """(layers, levels, tile size) of the scene matrix the app's overrides give."""
    cfg = settings.compose("scene", settings.scene_overrides)
    return [int(x) for x in cfg.layers], int(cfg.levels), int(cfg.tile_size)


def fresh_dir(settings: AppSettings, kind: str) -> Path:
    return new_run_dir(settings.runs / kind)
