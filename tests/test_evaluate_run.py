"""`clipasso-pl evaluate` end to end on a tiny generated dataset with the tiny random-weight models.

The accuracies of these runs mean nothing (random weights); the tests check the files, the table's
shape, resumption, sharding and the one accuracy that is known without weights: sketches equal to
their photos find their own photo (instance top-1 = 1) with any encoder that separates the photos.
"""

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from clipasso_pl.config import compose
from clipasso_pl.errors import ClipassoError
from clipasso_pl.evaluate.runner import run_evaluate
from cli_runs import cli

LEVELS = "[4,8]"
# A CPU-sized run: the smoke preset, one seed, one step without augmentation.
FAST = ["preset=smoke", f"levels={LEVELS}", "seeds=[0]", "steps=1", "eval_interval=1", "augment.num_augs=0"]


def draw_dataset(root: Path) -> Path:
    """2 classes x 2 photos: outlined circles and squares of different sizes (PIL)."""
    for cls in ("circle", "square"):
        (root / cls).mkdir(parents=True)
        for i, (pad, width) in enumerate([(12, 6), (30, 4)]):
            img = Image.new("RGB", (96, 96), "white")
            draw = ImageDraw.Draw(img)
            box = (pad, pad + 4 * i, 96 - pad, 96 - pad)
            (draw.ellipse if cls == "circle" else draw.rectangle)(box, outline="black", width=width)
            img.save(root / cls / f"{cls}{i}.png")
    return root


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    base = tmp_path_factory.mktemp("evaluate")
    data = draw_dataset(base / "data")
    run_dir = base / "run"
    proc = cli("evaluate", f"data={data}", *FAST, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return data, run_dir, proc.stdout


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_cli_writes_table_plot_grid_and_sketches(evaluated):
    data, run_dir, stdout = evaluated
    rows = read_csv(run_dir / "results.csv")
    assert [r["row"] for r in rows] == ["4 strokes", "8 strokes", "photos (ceiling)",
                                        "random 4 strokes (floor)", "random 8 strokes (floor)"]
    assert [r["kind"] for r in rows] == ["sketch", "sketch", "photo", "random", "random"]
    assert [r["strokes"] for r in rows] == ["4", "8", "", "4", "8"]
    assert all(r["n"] == "4" for r in rows)
    for r in rows:
        for m in ("top1", "top3", "instance_top1"):
            value, lo, hi = float(r[m]), float(r[f"{m}_ci_low"]), float(r[f"{m}_ci_high"])
            assert 0 <= lo <= value <= hi <= 1 and value * 4 == pytest.approx(round(value * 4))
        assert r["ci"] == "wilson 95%"
        assert float(r["top3"]) == 1.0  # 2 classes: the top 3 hold both
    assert "paper_top1" not in rows[0]
    md = (run_dir / "results.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 5 and "instance top-1" in table[0]
    assert "random weights: these accuracies are not meaningful" in md
    assert "| 4 strokes |" in stdout  # the table is printed too
    for name in ("accuracy.png", "examples.png"):
        with Image.open(run_dir / name) as img:
            img.load()
            assert img.width >= 400 and img.height >= 300, name
    with Image.open(run_dir / "examples.png") as img:
        assert img.size == (110 + 150 * 4, 22 + 168 * 3)  # 4 photos x (photo row + 2 levels)
    samples = read_csv(run_dir / "samples.csv")
    assert len(samples) == 4 * 5 and {s["kind"] for s in samples} == {"sketch", "photo", "random"}
    state = json.loads((run_dir / "evaluation.json").read_text())
    assert state["complete"] and state["jobs"] == 8 and state["sketches_made"] == 8 and state["sketches_reused"] == 0
    for level in (4, 8):
        for cls in ("circle", "square"):
            for i in range(2):
                job = run_dir / "sketches" / str(level) / cls / f"{cls}{i}"
                assert (job / "best.svg").is_file() and (job / "summary.json").is_file()
                assert json.loads((job / "summary.json").read_text())["strokes"] == level
                assert (job / "best.svg").read_text().count("<path") == level


@pytest.mark.slow
def test_second_run_skips_finished_sketches_and_gives_the_same_table(evaluated):
    data, run_dir, _ = evaluated
    svgs = sorted((run_dir / "sketches").rglob("best.svg"))
    stamps = [p.stat().st_mtime_ns for p in svgs]
    before = (run_dir / "results.csv").read_text()
    state = run_evaluate(compose("evaluate", [f"data={data}", *FAST]), run_dir)
    assert state["sketches_made"] == 0 and state["sketches_reused"] == 8 and state["complete"]
    assert [p.stat().st_mtime_ns for p in svgs] == stamps
    assert (run_dir / "results.csv").read_text() == before


def copy_photos_as_sketches(data: Path, store: Path, levels=(4, 8), skip=lambda level, cls, stem: False) -> None:
    for level in levels:
        for photo in sorted(data.rglob("*.png")):
            if not skip(level, photo.parent.name, photo.stem):
                dest = store / str(level) / photo.parent.name / photo.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(photo, dest)


def test_sketches_equal_to_photos_find_their_own_photo(evaluated, tmp_path):
    from clipasso_pl.evaluate.classifier import ZeroShotClassifier
    from clipasso_pl.evaluate.data import load_dataset
    from clipasso_pl.sketch_target import load_target

    data = evaluated[0]
    store = tmp_path / "sketches"
    copy_photos_as_sketches(data, store)
    cfg = compose("evaluate", [f"data={data}", *FAST, f"sketches={store}", "eval.random_baseline=false"])
    # precondition: the (random) encoder separates the photos
    photos = torch.stack([load_target(p.path) for p in load_dataset(data).photos])
    emb = ZeroShotClassifier(cfg.eval.classifier, cfg.eval.pretrained).encode_images(photos)
    cos = emb @ emb.T
    assert float((cos - 2 * torch.eye(len(cos))).max()) < 1 - 1e-4
    state = run_evaluate(cfg, tmp_path / "run")
    assert state["sketches_made"] == 0 and state["sketches_reused"] == 8
    results = state["results"]
    assert set(results) == {"4 strokes", "8 strokes", "photos (ceiling)"}
    for level in ("4 strokes", "8 strokes"):
        assert results[level]["instance_top1"] == 1.0
        assert results[level]["top1"] == results["photos (ceiling)"]["top1"]  # same pictures, same classes
    assert not list((tmp_path / "run").rglob("summary.json"))  # nothing was sketched


def test_a_shard_leaves_the_results_to_the_run_that_finds_every_sketch(evaluated, tmp_path):
    from clipasso_pl.evaluate.data import load_dataset, make_jobs, shard_jobs

    data = evaluated[0]
    store = tmp_path / "sketches"
    jobs = make_jobs(load_dataset(data), [4, 8], [0], store)
    other = {j.run_dir for j in shard_jobs(jobs, 1, 2)}
    copy_photos_as_sketches(data, store, skip=lambda level, cls, stem: store / str(level) / cls / stem in other)
    cfg = compose("evaluate", [f"data={data}", *FAST, f"sketches={store}", "shard=0", "num_shards=2"])
    state = run_evaluate(cfg, tmp_path / "run")
    assert not state["complete"] and state["missing"] == len(other) == 4 and state["sketches_made"] == 0
    assert not (tmp_path / "run" / "results.csv").exists()


def test_bad_inputs_name_the_key(tmp_path):
    with pytest.raises(ClipassoError, match="data="):
        run_evaluate(compose("evaluate", ["preset=smoke"]), tmp_path)
    with pytest.raises(ClipassoError, match="levels="):
        run_evaluate(compose("evaluate", ["preset=smoke", "levels=[]", f"data={tmp_path}"]), tmp_path)
    with pytest.raises(ClipassoError, match="eval.ci="):
        run_evaluate(compose("evaluate", ["preset=smoke", "eval.ci=normal", f"data={tmp_path}"]), tmp_path)
