"""``clipasso-pl app [key=value ...] [--host H] [--port P] [--runs DIR] [--max-upload-mb N]``.

Binds 127.0.0.1 unless ``--host`` is given. Every job writes under ``--runs`` (default
``outputs/app``); the server lets a browser fetch files from there only (Gradio's
``allowed_paths``; its upload cache is ``<runs>/.uploads``), and refuses uploads above
``--max-upload-mb``. ``key=value`` overrides apply to every sketch run (``preset=`` to the
scene runs too; ``scene.<key>=value`` to scene runs only).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import ClipassoError

INSTALL_HINT = "the app needs Gradio: pip install -e '.[app]' (or make app)"


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="clipasso-pl app",
                                     description="Serve the clipasso-pl web app (Gradio); 127.0.0.1 unless --host.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--runs", default="outputs/app", help="the app's run folder (the only one it serves files from)")
    parser.add_argument("--max-upload-mb", type=float, default=20.0)
    args, overrides = parser.parse_known_args(argv)
    unknown = [o for o in overrides if o.startswith("-") or "=" not in o]
    if unknown:
        raise ClipassoError(f"clipasso-pl app: unknown argument(s) {' '.join(unknown)}: "
                            "pass key=value overrides and --host/--port/--runs/--max-upload-mb")
    return args, overrides


def launch(argv: list[str], block: bool = True):
    args, overrides = parse(argv)
    runs_dir = Path(args.runs).absolute()
    from ..runs import ensure_writable

    ensure_writable(runs_dir)
    # Gradio reads these when it is imported: uploads land inside the run folder, nothing phones home.
    os.environ["GRADIO_TEMP_DIR"] = str(runs_dir / ".uploads")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ClipassoError(INSTALL_HINT) from None
    from .runs import AppSettings
    from .ui import build

    settings = AppSettings(runs_dir, overrides, args.max_upload_mb)
    settings.base()  # a bad override is one line now, not in the page later
    settings.compose("scene", settings.scene_overrides)
    demo = build(settings)
    demo.queue(default_concurrency_limit=1)
    print(f"clipasso-pl app: http://{args.host}:{args.port} (runs in {runs_dir})", flush=True)
    demo.launch(server_name=args.host, server_port=args.port, allowed_paths=[str(runs_dir)],
                max_file_size=int(args.max_upload_mb * 2**20), show_error=False, inbrowser=False, share=False,
                footer_links=[], prevent_thread_lock=not block, quiet=True)
    return demo


def main(argv: list[str]) -> None:
    launch(argv)
