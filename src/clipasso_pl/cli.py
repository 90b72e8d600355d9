"""``clipasso-pl <command> [hydra overrides]``: sketch, scene, evaluate, report, bench.

The CLI holds no maths: it composes the Hydra config of the command, picks the run
directory (Hydra's), calls the command's runner and turns a :class:`ClipassoError`
into one line on stderr and exit status 2.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from .errors import ClipassoError

# command -> (config name or None for a plain argv command, "module:function")
COMMANDS: dict[str, tuple[str | None, str]] = {
    "sketch": ("sketch", "clipasso_pl.cli:sketch_main"),
    "scene": ("scene", "clipasso_pl.scene.driver:run_scene"),
    "evaluate": ("evaluate", "clipasso_pl.evaluate.runner:run_evaluate"),
    "report": (None, "clipasso_pl.report:main"),
    "bench": (None, "clipasso_pl.bench:main"),  # bench=render: the renderer benchmark
}

COMMAND_ENV = "CLIPASSO_PL_COMMAND"
USAGE = "usage: clipasso-pl {" + ",".join(COMMANDS) + "} [key=value ...]   (e.g. clipasso-pl sketch target=photo.png strokes=8)"


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(ClipassoError.exit_code)


def resolve(spec: str):
    module, func = spec.split(":")
    return getattr(importlib.import_module(module), func)


def sketch_main(cfg, run_dir: Path) -> dict:
    from .api import run_sketch

    result = run_sketch(cfg, run_dir)
    s = result.summary
    if s.get("best_seed") is not None:
        print(f"best sketch: {result.best_svg} (seed {s['best_seed']}, eval loss {s['best_loss']:.5f} "
              f"at step {s['best_step']}; {s['seconds_per_step']:.3f} s/step)")
    return s


def check_overrides(config_name: str, overrides: list[str]) -> None:
    """Compose once before Hydra runs, so a bad key or group option is one line and exit 2."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .config import compose

    plain = [o for o in overrides if not o.startswith(("hydra", "-", "+hydra"))]
    if any("," in o.split("=", 1)[-1] and not o.split("=", 1)[-1].startswith("[") for o in plain):
        return  # a multirun sweep list: Hydra validates each job
    try:
        compose(config_name, plain)
    except (HydraException, OmegaConfBaseException) as e:
        fail(" ".join(str(e).split()) + " (see the keys in configs/" + config_name + ".yaml)")
    run_dir = next((o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")), None)
    if run_dir:  # Hydra creates it before the command starts: check it first
        from .api import ensure_writable

        ensure_writable(Path(run_dir))


def run_hydra(config_name: str, runner, argv: list[str]) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from .config import config_dir

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)
    def task(cfg):
        from hydra.types import RunMode

        from .api import pin_job_device

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN and "trainer" in cfg:
            pin_job_device(cfg, int(hc.job.num))
        try:
            return runner(cfg, Path(hc.runtime.output_dir))
        except ClipassoError as e:
            fail(str(e))

    sys.argv = [f"clipasso-pl {config_name}", *argv]
    task()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0 if argv else 2)
    if argv[0] not in COMMANDS and os.environ.get("LOCAL_RANK") and os.environ.get(COMMAND_ENV) in COMMANDS:
        # A DDP worker: Lightning relaunches `python -m clipasso_pl.cli <overrides>` without the command.
        argv = [os.environ[COMMAND_ENV], *argv]
    command, rest = argv[0], argv[1:]
    os.environ[COMMAND_ENV] = command
    if command not in COMMANDS:
        fail(f"unknown command '{command}': {USAGE}")
    config_name, spec = COMMANDS[command]
    try:
        runner = resolve(spec)
        if config_name is None:
            runner(rest)
            return
        if "--help" not in rest and "-h" not in rest and "--cfg" not in rest:
            check_overrides(config_name, rest)
        run_hydra(config_name, runner, rest)
    except ClipassoError as e:
        fail(str(e))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130)


if __name__ == "__main__":
    main()
