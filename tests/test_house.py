"""The house (DESIGN.md's module table, README's Layout): every import points down the floors
below, there is no import cycle, no module is over 400 lines and no class over 250.

Read from the source with ``ast`` (nothing is imported), so it takes a fraction of a second.
A module's floor is that of the longest name in FLOORS that it is or sits under; a package's
``__init__`` is on the floor of its package. A new module needs a line here.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "clipasso_pl"

# Lowest first. A module may import its own floor and the floors below, never one above.
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("foundations: errors, choices, settings, host/device plumbing, pictures",
     ("clipasso_pl", "errors", "choices", "schedules", "accel", "syncs", "tracking", "pictures", "config")),
    ("pixels: images, strokes, masks, rasterizers",
     ("images", "strokes", "masking", "sketch_target", "render")),
    ("maths: CLIP, losses, initialisation, the scene's inputs and MLPs, recognition metrics",
     ("clip", "losses", "init", "scene.background", "scene.foreground", "scene.inputs", "scene.losses",
      "scene.mlp", "scene.ratios", "scene.selection", "evaluate.data", "evaluate.metrics", "evaluate.classifier")),
    ("training: the LightningModules, their contract and parts, the callbacks, run plumbing",
     ("runs", "training", "module", "scene.module", "scene", "callbacks")),
    ("runs: building and running a command, reports",
     ("api", "bench", "report", "scene.driver", "scene.matrix", "scene.store", "evaluate", "evaluate.runner",
      "evaluate.report", "evaluate.baseline")),
    ("entry points: the CLI and the web app", ("cli", "app")),
]
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 250


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor_of(module: str) -> int:
    short = module.removeprefix("clipasso_pl.") if module != "clipasso_pl" else module
    best, floor = -1, None
    for level, (_, names) in enumerate(FLOORS):
        for name in names:
            if (short == name or short.startswith(name + ".")) and len(name) > best:
                best, floor = len(name), level
    assert floor is not None, f"{module} is on no floor: give it a line in FLOORS"
    return floor


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``path`` imports (``from X import m`` counts m when it is a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = {f"{target}.{a.name}" for a in node.names} & known
            if subs:
                found |= subs
                if node.module is None:  # `from . import m`: only the submodules
                    continue
            if target in known:
                found.add(target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names} & known
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, set(mods)) for name, path in mods.items()}


def test_every_import_points_down_the_floors():
    upward = [f"{a} (floor {floor_of(a)}) imports {b} (floor {floor_of(b)})"
              for a, targets in graph().items() for b in sorted(targets)
              if floor_of(b) > floor_of(a) and not b.startswith(a + ".")]  # a package may gather its own modules
    assert upward == []


def test_no_import_cycle():
    edges = {a: {b for b in targets if not b.startswith(a + ".")} for a, targets in graph().items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_no_module_or_class_is_too_long():
    too_long = []
    for name, path in modules().items():
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                too_long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert too_long == []


@pytest.mark.parametrize("bad", ["renders_clip", "cycle"])
def test_the_checks_catch_what_they_look_for(bad, tmp_path, monkeypatch):
    """A rasterizer importing CLIP points up; two modules importing each other are a cycle."""
    package = tmp_path / "clipasso_pl"
    (package / "render").mkdir(parents=True)
    (package / "clip").mkdir()
    for init in (package, package / "render", package / "clip"):
        (init / "__init__.py").write_text("")
    if bad == "renders_clip":
        (package / "render" / "core.py").write_text("from ..clip import models\n")
        (package / "clip" / "models.py").write_text("")
    else:
        (package / "clip" / "models.py").write_text("from . import features\n")
        (package / "clip" / "features.py").write_text("from .models import load\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", package)
    check = test_every_import_points_down_the_floors if bad == "renders_clip" else test_no_import_cycle
    with pytest.raises(AssertionError, match=r"render.core \(floor 1\) imports clipasso_pl.clip|clip.features -> "):
        check()
