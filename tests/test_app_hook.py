"""The app's hook into a run (no browser, no Gradio): the watcher records evals and Stop keeps the best so far."""

import json
import threading

import pytest

from clipasso_pl.api import run_sketch
from clipasso_pl.app.jobs import Job, one_line
from clipasso_pl.app.runs import AppSettings, SketchForm, parse_seeds
from clipasso_pl.app.watch import RunWatcher
from clipasso_pl.config import compose
from clipasso_pl.errors import ClipassoError


class StopAtStep(RunWatcher):
    """Presses Stop once the run reaches ``step`` (as the page's button does, from outside the loop)."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.at = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.at:
            threading.Thread(target=self.stop).start()
        super().on_train_batch_end(trainer, module, outputs, batch, batch_idx)


@pytest.mark.slow
def test_watcher_records_evals_and_stop_keeps_best(tmp_path):
    cfg = compose("sketch", ["preset=smoke", "logger=csv"], steps=60, eval_interval=2, seeds=[0, 1],
                  checkpoint_interval=0)
    watcher = StopAtStep(5)
    result = run_sketch(cfg, tmp_path / "run", callbacks=[watcher])
    p = watcher.snapshot()
    steps_run = result.summary["steps_run"]
    assert 5 <= steps_run < 60  # stopped, within a couple of steps of the request
    assert p.max_steps == 60 and p.step == steps_run and p.seeds == [0, 1]
    assert [s for s, _, _ in p.curve][::2] == list(range(0, steps_run, 2))  # every eval, both seeds
    assert p.sketches.shape == (2, 224, 224, 3) and p.sketches.dtype.name == "uint8"
    assert p.sketches.min() < 128  # strokes were drawn
    assert (tmp_path / "run" / "best.svg").is_file()
    best = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert best["best_loss"] == pytest.approx(min(v for _, s, v in p.curve if s == best["best_seed"]), rel=1e-5)


def test_form_becomes_overrides_on_the_app_settings(tmp_path):
    settings = AppSettings(tmp_path, ["preset=smoke", "logger=csv", "scene.levels=3"])
    assert settings.scene_overrides == ["preset=smoke", "levels=3"]
    assert settings.sketch_overrides == ["preset=smoke", "logger=csv"]
    defaults = settings.form_defaults()
    assert defaults["clip_model"] == "tiny_rn" and defaults["clip_weights"] == "random" and defaults["steps"] == 20
    form = SketchForm("p.png", strokes="8", seeds="0, 7", steps=30, clip_model="tiny_rn", clip_weights="random",
                      text_target="a cat", text_weight=0.5, preset="official")
    overrides, values = form.overrides(settings)
    assert overrides == ["logger=csv", "preset=official"]  # one preset: the form's replaces the app's
    assert values["strokes"] == 8 and values["seeds"] == [0, 7] and values["clip.pretrained"] is None
    assert values["text_target"] == "a cat" and values["clip_text_guide"] == 0.5
    cfg = settings.compose("sketch", settings.sketch_overrides, target="p.png", **{**values, "text_target": None,
                                                                                   "clip_text_guide": 0.0})
    assert cfg.strokes == 8 and list(cfg.seeds) == [0, 7] and cfg.clip.model == "tiny-rn"
    with pytest.raises(ClipassoError, match="seeds 'a, b'"):
        parse_seeds("a, b")
    with pytest.raises(ClipassoError, match="strokes is 0"):
        SketchForm("p.png", strokes=0).overrides(settings)


def test_job_errors_are_one_line(tmp_path):
    def work(job):
        raise ClipassoError(f"target {tmp_path}/upload/x.png is not a readable image: "
                            "pass target=<path to a PNG or JPEG photo>")

    job = Job(work)
    job.hide[f"{tmp_path}/upload/x.png"] = "x.png"
    job.start().thread.join(10)
    assert job.error == "error: target x.png is not a readable image: upload a PNG or JPEG photo"
    bug = one_line(RuntimeError("boom\nsecond line"))
    assert bug.startswith("error: internal error (RuntimeError: boom second line)") and "\n" not in bug


def test_uploads_above_the_limit_are_refused(tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * 4096)
    settings = AppSettings(tmp_path, [], max_upload_mb=0.002)
    with pytest.raises(ClipassoError, match=r"the photo is 0\.0 MB, above the app's limit of 0\.002 MB"):
        settings.check_upload_size(big, "the photo")


def test_app_binds_localhost_unless_told():
    from clipasso_pl.app.server import parse

    args, overrides = parse(["preset=smoke", "--port", "8001"])
    assert args.host == "127.0.0.1" and args.port == 8001 and overrides == ["preset=smoke"]
    assert parse(["--host", "0.0.0.0"])[0].host == "0.0.0.0"
    with pytest.raises(ClipassoError, match="unknown argument"):
        parse(["--bogus"])


@pytest.mark.slow
def test_stop_ends_a_scene_job_before_its_next_stage(tmp_path):
    from PIL import Image

    from clipasso_pl.app.runs import scene_work

    photo = tmp_path / "scene.png"
    rgba = Image.new("RGBA", (64, 64), (200, 180, 160, 0))
    rgba.paste((90, 60, 30, 255), (16, 16, 48, 48))
    rgba.save(photo)
    settings = AppSettings(tmp_path / "runs", ["preset=smoke"])
    job = Job(scene_work(settings, str(photo), None, tmp_path / "runs" / "scene"), stop_raises=True)
    job.stop()  # pressed before the first step: the first stage raises RunStopped, no cell is trained
    job.start().thread.join(300)
    assert not job.alive() and job.error == "stopped"
    assert (tmp_path / "runs" / "scene" / "config.yaml").is_file()
    assert not list((tmp_path / "runs" / "scene").rglob("done.json"))


def test_a_bad_override_is_one_line(tmp_path):
    with pytest.raises(ClipassoError, match="Could not override 'nosuchkey'.*configs/sketch.yaml"):
        AppSettings(tmp_path, ["nosuchkey=1"]).base()
