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
from contextlib import contextmanager
from pathlib import Path

from .errors import WRITE_ERRNOS, ClipassoError, causes, user_error

# command -> (config name or None for a plain argv command, "module:function")
COMMANDS: dict[str, tuple[str | None, str]] = {
    "sketch": ("sketch", "clipasso_pl.cli:sketch_main"),
    "scene": ("scene", "clipasso_pl.scene.driver:run_scene"),
    "evaluate": ("evaluate", "clipasso_pl.evaluate.runner:run_evaluate"),
    "report": (None, "clipasso_pl.report:main"),
    "bench": (None, "clipasso_pl.bench.run:main"),  # bench=render: the renderer benchmark
    "app": (None, "clipasso_pl.app.server:main"),  # the web app (Gradio, the [app] extra)
}

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
        from .runs import checkpoint_path

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
    if result.rank != 0:  # a DDP rank > 0: rank 0 reports
        return s
    if s.get("best_loss") is not None:
        print(f"best sketch: {result.best_svg} (seed {s['best_seed']}, eval loss {s['best_loss']:.5f} "
              f"at step {s['best_step']}; {s['seconds_per_step']:.3f} s/step)")
    elif s.get("best_is_final"):
        print(f"sketch: {result.best_svg} (no evals: the final strokes of seed {s['best_seed']}; "
              f"{s['seconds_per_step']:.3f} s/step)")
    if s.get("skipped_steps"):
        print(f"note: {s['skipped_steps']} of {s['steps_run']} steps were skipped as non-finite (see train/nonfinite_steps)")
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
    # the last one wins; Lightning's DDP relaunch passes it quoted
    run_dir = next((o.split("=", 1)[1].strip("'\"") for o in reversed(overrides) if o.startswith("hydra.run.dir=")), None)
    if run_dir is None:  # the default outputs/<date>/<time>: check the part that does not change
        import yaml

        from .config import config_dir

        template = str(yaml.safe_load((config_dir() / f"{config_name}.yaml").read_text())["hydra"]["run"]["dir"])
        run_dir = os.path.dirname(template.split("${", 1)[0].rstrip("/") + "/") or "."
    # Hydra creates the run directory before the command starts (a failure there is its traceback): check it first
    from .runs import ensure_writable

    ensure_writable(Path(run_dir))


def run_hydra(config_name: str, runner, argv: list[str]) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from .config import config_dir

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)
    def task(cfg):
        from hydra.types import RunMode

        from .runs import pin_job_device

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN and "trainer" in cfg:
            pin_job_device(cfg, int(hc.job.num))
        run_dir = Path(hc.runtime.output_dir)
        relaunchable(entry, config_name, hc)
        try:
            with ddp_session():
                return runner(cfg, run_dir)
        except Exception as e:
            boundary(e, continue_hint(config_name, cfg, run_dir))
            raise  # a bug: Hydra prints it (the whole traceback with HYDRA_FULL_ERROR=1)

    entry = sys.argv[0]
    sys.argv = [f"clipasso-pl {config_name}", *argv]  # Hydra's usage line names the command
    task()


# What Lightning's DDP launcher leaves in the environment of the process that started the ranks.
DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextmanager
def ddp_session():
    """A job's DDP ranks end with the job: its process group is destroyed and Lightning's variables
    removed, so the next job of a sweep in this process starts its own ranks (else Lightning would
    take LOCAL_RANK for an external launcher and reuse the finished group)."""
    saved = {k: os.environ.get(k) for k in DDP_ENV}
    try:
        yield
    finally:
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def relaunchable(entry: str, command: str, hc) -> None:
    """Make this job's ``sys.argv`` one that Lightning's DDP launcher can re-run for ranks 1..N-1.

    The launcher starts ``python <argv[0]> <argv[1:]>`` (``python -m clipasso_pl.cli <argv[1:]>``
    under ``python -m``), adding ``hydra.run.dir=<hydra.run.dir>``. So argv[0] is the program that
    was started (the installed ``clipasso-pl`` script), then the command and this job's own
    overrides (a sweep job's values, not the sweep), and ``hydra.run.dir`` is this job's directory.
    """
    from omegaconf import read_write

    # the other ranks log to the console only: rank 0 alone writes into the run directory
    sys.argv = [entry, command, *hc.overrides.task, "hydra/job_logging=stdout"]
    with read_write(hc):
        hc.run.dir = hc.runtime.output_dir


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
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
