"""The evaluation's inputs: an ImageFolder-style photo set, the sketch jobs over it, and where sketches live.

Layouts (``<class>`` is a folder name; its prompt name replaces ``_`` by a space):

- photos: ``<data>/<class>/<image>.{png,jpg,...}``
- sketches: ``<sketches>/<level>/<class>/<image stem>/best.svg`` (a clipasso-pl run directory, what
  ``clipasso-pl evaluate`` writes), or a plain file ``<sketches>/<level>/<class>/<image stem>.{svg,png,jpg,...}``
  (sketches made elsewhere). With ``eval.per_seed=true`` each seed is its own job and its own sample:
  ``<sketches>/<level>/<class>/<image stem>/seed<k>/best.svg``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ClipassoError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SKETCH_FILE_SUFFIXES = (".svg", *IMAGE_SUFFIXES)


@dataclass(frozen=True)
class Photo:
    path: Path
    class_dir: str   # folder name under the data root
    label: int       # index into Dataset.class_dirs
    index: int       # index into Dataset.photos

    @property
    def stem(self) -> str:
        return self.path.stem


@dataclass(frozen=True)
class Dataset:
    root: Path
    class_dirs: list[str]  # sorted folder names
    photos: list[Photo]    # sorted by (class, file name)

    @property
    def class_names(self) -> list[str]:
        """The names put into the prompt templates: ``teddy_bear`` -> ``teddy bear``."""
        return [class_name(c) for c in self.class_dirs]

    def per_class(self) -> dict[str, int]:
        counts = {c: 0 for c in self.class_dirs}
        for p in self.photos:
            counts[p.class_dir] += 1
        return counts


def class_name(folder: str) -> str:
    return folder.replace("_", " ").strip()


def _natural(name: str) -> list:
    import re

    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def load_dataset(root: str | Path | None) -> Dataset:
    """Every image under ``root/<class>/``; classes and photos in natural sort order."""
    if not root:
        raise ClipassoError("no dataset given: pass data=<root> with one folder of photos per class (<root>/<class>/<image>)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ClipassoError(f"data={root} is not a directory: pass a folder with one sub-folder of photos per class")
    class_dirs, photos = [], []
    for folder in sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: _natural(d.name)):
        images = sorted((f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES),
                        key=lambda f: _natural(f.name))
        if not images:
            continue
        stems = [f.stem for f in images]
        if len(set(stems)) != len(stems):
            dup = next(s for s in stems if stems.count(s) > 1)
            raise ClipassoError(f"{folder} holds two images named {dup}.*: give every photo of a class its own file name stem")
        label = len(class_dirs)
        class_dirs.append(folder.name)
        photos += [Photo(f, folder.name, label, len(photos) + i) for i, f in enumerate(images)]
    if len(class_dirs) < 2:
        raise ClipassoError(f"data={root} has {len(class_dirs)} class folder(s) with images: zero-shot recognition needs "
                            "at least 2 (<root>/<class>/<image>)")
    return Dataset(root, class_dirs, photos)


@dataclass(frozen=True)
class Job:
    """One sketch to make: a photo at a level (stroke count), with the seeds optimised together."""

    photo: Photo
    level: int
    seeds: tuple[int, ...]
    run_dir: Path

    @property
    def name(self) -> str:
        seeds = f" seed {self.seeds[0]}" if len(self.seeds) == 1 else ""
        return f"{self.level} strokes, {self.photo.class_dir}/{self.photo.path.name}{seeds}"


def sample_dir(store: Path, level: int, photo: Photo) -> Path:
    return Path(store) / str(level) / photo.class_dir / photo.stem


def make_jobs(dataset: Dataset, levels: list[int], seeds: list[int], store: Path, per_seed: bool = False) -> list[Job]:
    """Every (photo, level[, seed]) job, in a fixed order: level, class, photo, seed."""
    jobs = []
    for level in levels:
        for photo in dataset.photos:
            base = sample_dir(store, level, photo)
            if per_seed:
                jobs += [Job(photo, int(level), (int(s),), base / f"seed{s}") for s in seeds]
            else:
                jobs.append(Job(photo, int(level), tuple(int(s) for s in seeds), base))
    return jobs


def shard_jobs(jobs: list[Job], shard: int, num_shards: int) -> list[Job]:
    """The jobs of shard ``shard`` of ``num_shards``: every num_shards-th job (round robin, so each shard
    gets every level and the shards finish at about the same time)."""
    if num_shards < 1:
        raise ClipassoError(f"num_shards={num_shards}: must be at least 1")
    if not 0 <= shard < num_shards:
        raise ClipassoError(f"shard={shard} is outside 0..{num_shards - 1}: pass shard=<0..num_shards-1>")
    return jobs[shard::num_shards]


def finished(run_dir: Path) -> bool:
    """A sketch run is done when its best sketch and summary are on disk (what resumption skips)."""
    return (run_dir / "best.svg").is_file() and (run_dir / "summary.json").is_file()


def find_sketch(run_dir: Path) -> Path | None:
    """The sketch file of one sample: a finished run's best.png/best.svg, or a plain file ``<run_dir>.<ext>``."""
    if finished(run_dir):
        png = run_dir / "best.png"
        return png if png.is_file() else run_dir / "best.svg"
    for suffix in SKETCH_FILE_SUFFIXES:
        for candidate in (run_dir.with_name(run_dir.name + suffix), run_dir.with_name(run_dir.name + suffix.upper())):
            if candidate.is_file():
                return candidate
    return None
