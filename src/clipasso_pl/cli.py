"""``clipasso-pl <command> [hydra overrides]``: sketch, scene, evaluate, report, bench.

The CLI holds no maths: it composes the Hydra config of the command, checks it against
the schema (``config.validate``) before any model loads, picks the run directory (Hydra's)
and calls the command's runner. It is the error boundary: every failure a user can cause
or meet (``errors.user_error``: our ClipassoError however deeply wrapped, Lightning's
misconfiguration, Pillow's size limit, an output that cannot be written) becomes one line
``error: <what happened>: <what to do>`` on stderr and exit status 2. Anything else is a
bug and keeps its traceback (Hydra's, complete with ``HYDRA_FULL_ERROR=1``).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from .errors import WRITE_ERRNOS, ClipassoError, causes, user_error

# command -> (config name or None for a plain argv command, "module:function")
COMMANDS: dict[str, tuple[str | None, str]] = {
    "sketch": ("sketch", "clipasso_pl.cli:sketch_main"),
    "scene": ("scene", "clipasso_pl.scene.driver:run_scene"),
    "evaluate": ("evaluate", "clipasso_pl.evaluate.runner:run_evaluate"),
    "report": (None, "clipasso_pl.report:main"),
    "bench": (None, "clipasso_pl.bench:main"),  # bench=render: the renderer benchmark
    "app": (None, "clipasso_pl.app.server:main"),  # the web app (Gradio, the [app] extra)
}

COMMAND_ENV = "CLIPASSO_PL_COMMAND"
USAGE = "usage: clipasso-pl {" + ",".join(COMMANDS) + "} [key=value ...]   (e.g. clipasso-pl sketch target=photo.png strokes=8)"


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(ClipassoError.exit_code)


def boundary(exc: BaseException, hint: str = "") -> None:
    """Print a user-fixable failure as one line and exit 2; return (to re-raise) for a bug."""
    problem = user_error(exc)
    if problem is None:
        return
    fail(str(problem) + (hint if write_failure(exc) else ""))


def write_failure(exc: BaseException) -> bool:
    return any(isinstance(e, OSError) and e.errno in WRITE_ERRNOS for e in causes(exc))


def continue_hint(command: str, cfg, run_dir: Path) -> str:
    """How to go on after the outputs could not be written: what was written is whole."""
    if command == "sketch":
        from .callbacks import checkpoint_path

        run = Path(cfg.get("resume") or run_dir)
        if checkpoint_path(run).is_file():
            return f"; then continue it with: clipasso-pl sketch resume={run}"
        return "; then run it again"
    if command == "evaluate":
        store = cfg.get("sketches") or Path(run_dir) / "sketches"
        return f"; then run it again with sketches={store} (finished sketches are reused)"
    if command == "scene":
        return f"; then run it again with matrix_dir={cfg.get('matrix_dir') or run_dir} (finished cells are kept)"
    return ""


def resolve(spec: str):
    module, func = spec.split(":")
    return getattr(importlib.import_module(module), func)


def sketch_main(cfg, run_dir: Path) -> dict:
    from .api import run_sketch

    result = run_sketch(cfg, run_dir)
    s = result.summary
    if s.get("best_loss") is not None:
        print(f"best sketch: {result.best_svg} (seed {s['best_seed']}, eval loss {s['best_loss']:.5f} "
              f"at step {s['best_step']}; {s['seconds_per_step']:.3f} s/step)")
    elif s.get("best_is_final"):
        print(f"sketch: {result.best_svg} (no evals: the final strokes of seed {s['best_seed']}; "
              f"{s['seconds_per_step']:.3f} s/step)")
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
    if run_dir is None:  # the default outputs/<date>/<time>: check the part that does not change
        import yaml

        from .config import config_dir

        template = str(yaml.safe_load((config_dir() / f"{config_name}.yaml").read_text())["hydra"]["run"]["dir"])
        run_dir = os.path.dirname(template.split("${", 1)[0].rstrip("/") + "/") or "."
    # Hydra creates the run directory before the command starts (a failure there is its traceback): check it first
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
        run_dir = Path(hc.runtime.output_dir)
        try:
            return runner(cfg, run_dir)
        except Exception as e:
            boundary(e, continue_hint(config_name, cfg, run_dir))
            raise  # a bug: Hydra prints it (the whole traceback with HYDRA_FULL_ERROR=1)

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
    except Exception as e:
        boundary(e)
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130)


if __name__ == "__main__":
    main()
