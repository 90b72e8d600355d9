"""Recognition metrics on hand-built embeddings whose accuracies are known exactly; CIs; configs; jobs."""

import math
from pathlib import Path

import pytest
import torch

from clipasso_pl.errors import ClipassoError
from clipasso_pl.evaluate import (
    bootstrap_interval,
    clopper_pearson_interval,
    confidence_interval,
    instance_hits,
    instance_top1,
    recognition,
    strict_ranks,
    tie_broken_scores,
    topk_accuracy,
    wilson_interval,
)
from clipasso_pl.evaluate.data import load_dataset, make_jobs, shard_jobs

# Classes are the 4 unit vectors; a sample's embedding v gives cos(v, e_c) = v_c / |v|, so the
# rows below fix every sample's rank of its true class, ties included (counted against it).
CLASSES = torch.eye(4)
SAMPLES = torch.tensor([
    [3.0, 2, 1, 0],  # label 0 -> rank 1
    [3.0, 2, 1, 0],  # label 1 -> rank 2
    [3.0, 2, 1, 0],  # label 2 -> rank 3
    [3.0, 2, 1, 0],  # label 3 -> rank 4
    [1.0, 1, 0, 0],  # label 0, tied with class 1 -> rank 2
    [1.0, 1, 1, 0],  # label 2, tied with classes 0 and 1 -> rank 3
    [0.0, 0, 0, 1],  # label 3 -> rank 1
    [1.0, 1, 1, 1],  # label 1, all tied -> rank 4
])
LABELS = torch.tensor([0, 1, 2, 3, 0, 2, 3, 1])
RANKS = [1, 2, 3, 4, 2, 3, 1, 4]


def zero_shot_scores():
    return torch.nn.functional.normalize(SAMPLES, dim=1) @ CLASSES.T


def test_strict_ranks_count_ties_against_the_true_class():
    assert strict_ranks(zero_shot_scores(), LABELS).tolist() == RANKS


@pytest.mark.parametrize("k,expected", [(1, 2 / 8), (2, 4 / 8), (3, 6 / 8), (4, 1.0), (10, 1.0)])
def test_topk_accuracy_with_torchmetrics_matches_the_exact_value(k, expected):
    assert topk_accuracy(zero_shot_scores(), LABELS, k) == pytest.approx(expected, abs=1e-7)


def test_tie_rule_does_not_depend_on_column_order():
    scores = zero_shot_scores()
    for perm in (torch.tensor([3, 2, 1, 0]), torch.tensor([1, 0, 3, 2]), torch.tensor([2, 0, 3, 1])):
        inverse = torch.argsort(perm)  # new column of old class c is inverse[c]
        permuted, labels = scores[:, perm], inverse[LABELS]
        assert strict_ranks(permuted, labels).tolist() == RANKS
        for k in (1, 2, 3):
            assert topk_accuracy(permuted, labels, k) == topk_accuracy(scores, LABELS, k)


def test_tie_broken_scores_are_strict_and_keep_the_order_of_distinct_scores():
    scores = zero_shot_scores()
    broken = tie_broken_scores(scores, LABELS)
    assert all(len(set(row.tolist())) == 4 for row in broken)
    strictly = scores[:, :, None] > scores[:, None, :]
    assert bool((broken[:, :, None] > broken[:, None, :])[strictly].all())


def test_recognition_returns_hits_predictions_and_torchmetrics_accuracies_that_agree():
    photos = CLASSES.clone()  # one photo per class; own photo = the class's photo
    scores = recognition(SAMPLES, LABELS, CLASSES, photos, torch.arange(4), LABELS, top_k=3)
    assert scores.top1.tolist() == [r <= 1 for r in RANKS]
    assert scores.top3.tolist() == [r <= 3 for r in RANKS]
    assert scores.accuracy["top1"] == pytest.approx(scores.top1.float().mean().item())
    assert scores.accuracy["top3"] == pytest.approx(scores.top3.float().mean().item())
    # the prediction of a tied sample is never its true class
    assert scores.predicted.tolist() == [0, 0, 0, 0, 1, 0, 3, 0]
    assert scores.instance.all() and scores.accuracy["instance_top1"] == 1.0  # one photo per class: trivially found


# Photos: class 0 = photos 0, 1, 2; class 1 = photos 3, 4 (unit vectors e0..e4).
PHOTOS = torch.eye(5)
PHOTO_LABELS = torch.tensor([0, 0, 0, 1, 1])
SKETCHES = torch.stack([
    PHOTOS[0] + 0.5 * PHOTOS[1],  # own photo 0 first -> hit
    PHOTOS[0] + 0.5 * PHOTOS[1],  # own photo 1 second -> miss
    PHOTOS[2] + 5.0 * PHOTOS[3],  # photo 3 is closer but of the other class (excluded) -> hit
    PHOTOS[3] + PHOTOS[4],        # own photo 3 tied with photo 4 -> miss
    PHOTOS[4],                    # hit
])
SKETCH_LABELS = torch.tensor([0, 0, 0, 1, 1])
OWN = torch.tensor([0, 1, 2, 3, 4])


def test_instance_top1_ranks_only_the_photos_of_the_class_and_counts_ties_as_misses():
    hits = instance_hits(SKETCHES, PHOTOS, SKETCH_LABELS, PHOTO_LABELS, OWN)
    assert hits.tolist() == [True, False, True, False, True]
    assert instance_top1(SKETCHES, PHOTOS, SKETCH_LABELS, PHOTO_LABELS, OWN) == pytest.approx(3 / 5)


def test_instance_rejects_an_own_photo_of_another_class():
    with pytest.raises(ValueError, match="another class"):
        instance_top1(SKETCHES, PHOTOS, SKETCH_LABELS, PHOTO_LABELS, torch.tensor([0, 1, 2, 0, 4]))


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(5, 10, 0.95)
    assert (lo, hi) == (pytest.approx(0.23659, abs=1e-4), pytest.approx(0.76341, abs=1e-4))
    lo, hi = wilson_interval(0, 10, 0.95)
    assert lo == 0.0 and hi == pytest.approx(0.27753, abs=1e-4)
    assert wilson_interval(10, 10, 0.95)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_clopper_pearson_closed_forms_at_zero_and_all_hits():
    n, alpha = 10, 0.05
    assert clopper_pearson_interval(0, n, 0.95) == (0.0, pytest.approx(1 - (alpha / 2) ** (1 / n), abs=1e-9))
    assert clopper_pearson_interval(n, n, 0.95) == (pytest.approx((alpha / 2) ** (1 / n), abs=1e-9), 1.0)
    lo, hi = clopper_pearson_interval(5, 10)
    wlo, whi = wilson_interval(5, 10)
    assert lo < wlo and hi > whi  # exact interval is the conservative one


def test_bootstrap_interval_is_reproducible_and_close_to_wilson_for_moderate_n():
    hits = torch.tensor([1] * 60 + [0] * 40, dtype=torch.bool)
    a = confidence_interval(hits, "bootstrap", 0.95, resamples=4000, seed=3)
    assert a == confidence_interval(hits, "bootstrap", 0.95, resamples=4000, seed=3)
    w = confidence_interval(hits, "wilson", 0.95)
    assert a[0] == pytest.approx(w[0], abs=0.03) and a[1] == pytest.approx(w[1], abs=0.03)
    assert bootstrap_interval(torch.ones(7)) == (1.0, 1.0)
    with pytest.raises(ValueError, match="unknown confidence interval"):
        confidence_interval(hits, "normal")


def test_intervals_contain_the_estimate_and_narrow_with_n():
    for kind in ("wilson", "clopper_pearson", "bootstrap"):
        small = confidence_interval(torch.tensor([1, 0] * 5).bool(), kind)
        large = confidence_interval(torch.tensor([1, 0] * 100).bool(), kind)
        assert small[0] <= 0.5 <= small[1] and large[0] <= 0.5 <= large[1]
        assert large[1] - large[0] < small[1] - small[0]


# --- dataset, jobs, shards -------------------------------------------------------------------


def make_folder(root: Path, layout: dict[str, int]) -> Path:
    from PIL import Image

    for cls, count in layout.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / cls / f"img{i}.png")
    return root


def test_dataset_classes_prompts_and_errors(tmp_path):
    ds = load_dataset(make_folder(tmp_path / "d", {"teddy_bear": 2, "cat": 3}))
    assert ds.class_dirs == ["cat", "teddy_bear"] and ds.class_names == ["cat", "teddy bear"]
    assert [p.index for p in ds.photos] == list(range(5)) and ds.per_class() == {"cat": 3, "teddy_bear": 2}
    with pytest.raises(ClipassoError, match="data="):
        load_dataset(tmp_path / "missing")
    with pytest.raises(ClipassoError, match="at least 2"):
        load_dataset(make_folder(tmp_path / "one", {"cat": 2}))
    with pytest.raises(ClipassoError, match="no dataset"):
        load_dataset(None)


def test_shards_partition_the_jobs(tmp_path):
    ds = load_dataset(make_folder(tmp_path / "d", {"a": 3, "b": 2}))
    jobs = make_jobs(ds, [4, 8, 16], [0, 1000], tmp_path / "s")
    assert len(jobs) == 15 and jobs[0].run_dir == tmp_path / "s" / "4" / "a" / "img0"
    per_seed = make_jobs(ds, [4], [0, 1000], tmp_path / "s", per_seed=True)
    assert len(per_seed) == 10 and per_seed[1].run_dir.name == "seed1000" and per_seed[1].seeds == (1000,)
    shards = [shard_jobs(jobs, i, 4) for i in range(4)]
    names = [j.run_dir for s in shards for j in s]
    assert sorted(names) == sorted(j.run_dir for j in jobs) and len(set(names)) == len(jobs)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ClipassoError, match="shard=4"):
        shard_jobs(jobs, 4, 4)


# --- configs ---------------------------------------------------------------------------------


def test_evaluate_config_shares_the_sketch_settings_under_the_same_names():
    from clipasso_pl.config import compose
    from clipasso_pl.evaluate.runner import EVALUATE_KEYS

    sketch = compose("sketch")
    evaluate = compose("evaluate")
    # every sketch setting the evaluation passes on exists in sketch.yaml under the same name
    per_job = {"target", "strokes", "images", "path_svg", "resume"}
    assert set(evaluate) - set(EVALUATE_KEYS) <= set(sketch)
    assert set(sketch) - set(evaluate) <= per_job
    from omegaconf import OmegaConf

    raw_sketch, raw_evaluate = (OmegaConf.to_container(c, resolve=False) for c in (sketch, evaluate))
    for key in ("clip", "init", "renderer", "trainer", "callbacks", "augment", "seeds", "steps", "lr", "canvas",
                "half_width", "fix_scale", "eval_interval", "max_nonfinite", "checkpoint_interval"):
        assert raw_evaluate[key] == raw_sketch[key], key
    assert evaluate.eval.classifier == "ViT-B-32" and evaluate.eval.pretrained == "openai"
    assert list(evaluate.levels) == [4, 8, 16, 32]


def test_smoke_preset_makes_the_classifier_tiny_and_paper_protocol_cites_its_source():
    from clipasso_pl.config import compose
    from clipasso_pl.evaluate.report import load_paper_numbers

    smoke = compose("evaluate", ["preset=smoke"])
    assert (smoke.eval.classifier, smoke.eval.pretrained, smoke.clip.model) == ("tiny-vit", None, "tiny-rn")
    paper = compose("evaluate", ["eval=paper_protocol"])
    assert paper.eval.protocol.classes == 10 and paper.eval.protocol.photos_per_class == 20
    assert paper.eval.classifier == "ViT-B-32" and list(paper.levels) == [4, 8, 16, 32]
    numbers = load_paper_numbers(paper.eval.paper)
    assert "CLIPasso" in numbers["source"] and "2202.05822" in numbers["source"]
    assert set(numbers["top1"]) == {4, 8, 16, 32}
    with pytest.raises(ClipassoError, match="eval.paper"):
        load_paper_numbers("no_such_paper")


def test_job_config_is_a_sketch_config_for_one_photo_and_level(tmp_path):
    from clipasso_pl.api import validate
    from clipasso_pl.config import compose
    from clipasso_pl.evaluate.runner import job_config

    ds = load_dataset(make_folder(tmp_path / "d", {"a": 1, "b": 1}))
    cfg = compose("evaluate", ["preset=smoke", f"data={tmp_path / 'd'}", "seeds=[0]", "steps=7"])
    job = make_jobs(ds, [8], [0], tmp_path / "s")[1]
    sketch_cfg = job_config(cfg, job)
    validate(sketch_cfg)
    assert sketch_cfg.strokes == 8 and sketch_cfg.target == str(ds.photos[1].path) and list(sketch_cfg.seeds) == [0]
    assert sketch_cfg.trainer.max_steps == 7 and sketch_cfg.augment.size == 224  # interpolations stay live
    assert "eval" not in sketch_cfg and "levels" not in sketch_cfg
