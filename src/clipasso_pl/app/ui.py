"""The page: Sketch, Abstraction and Scene tabs (Gradio Blocks), each job a generator that polls its :class:`Job`.

All job events share one Gradio concurrency group (``device``) of size 1: one job runs at a
time, the others wait in Gradio's queue, which shows each page its place over the preview.
"""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr
from PIL import Image

from ..images import to_uint8
from ..scene.matrix import cell_dir, matrix_picture
from . import runs, views
from .jobs import POLL_S, Job, Registry, one_line, zip_folder
from .runs import AppSettings, SketchForm

DEVICE = "device"  # the concurrency group of every job


def start_stop(prefix: str) -> tuple[gr.Button, gr.Button]:
    """A job's Start and Stop buttons (elem_id ``<prefix>-start`` and ``<prefix>-stop``), in the open block."""
    return (gr.Button("Start", variant="primary", elem_id=f"{prefix}-start"),
            gr.Button("Stop", variant="stop", elem_id=f"{prefix}-stop"))


def job_results(prefix: str, picture_label: str, picture_id: str) -> tuple[gr.HTML, gr.HTML, gr.Image, gr.File]:
    """Under a job's form: its status line, progress line, result picture and downloads (elem_id
    ``<prefix>-status``, ``<prefix>-progress``, ``picture_id``, ``<prefix>-downloads``)."""
    status = gr.HTML(elem_id=f"{prefix}-status")
    progress = gr.HTML(elem_id=f"{prefix}-progress")
    picture = gr.Image(label=picture_label, type="pil", format="png", interactive=False, elem_id=picture_id)
    files = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id=f"{prefix}-downloads")
    return status, progress, picture, files


def sketch_downloads(run_dir: Path) -> list[str]:
    """best.svg, best.png, the progress animation and the run folder as a zip (those that exist)."""
    files = [run_dir / n for n in ("best.svg", "best.png", "progress.gif", "progress.mp4")]
    found = [str(f) for f in files if f.is_file()]
    if run_dir.is_dir():
        found.append(str(zip_folder(run_dir, run_dir.parent / f"{run_dir.name}.zip")))
    return found


def finished_line(job: Job, run_dir: Path, what: str) -> str:
    """The status line (HTML) at the end of a job."""
    if job.error and job.error != "stopped":
        return views.line(job.error, "error")
    where = f"run folder: {run_dir}"
    if job.stopped or job.error == "stopped":
        best = " — best so far kept in best.svg" if (run_dir / "best.svg").is_file() else ""
        return views.line(f"stopped{best}; {where}", "ok")
    return views.line(f"{what} finished; {where}", "ok")


def build(settings: AppSettings) -> gr.Blocks:
    registry = Registry()
    defaults = settings.form_defaults()
    layers, levels, tile = runs.scene_shape(settings)

    def start_job(request: gr.Request, work, stop_raises=False) -> Job:
        job = Job(work, stop_raises=stop_raises)
        registry.put(request.session_hash, job)
        return job.start()

    def end_job(request: gr.Request, job: Job) -> None:
        if job.alive():  # the generator was closed (page closed or reloaded): stop the run, free the device
            job.stop()
            job.thread.join(timeout=600)
        registry.drop(request.session_hash, job)

    def stop(request: gr.Request):
        stopped = registry.stop(request.session_hash)
        return views.line("stopping: the run ends after this step" if stopped else "no run of this page is going on")

    def check_photo(photo, mask, mask_object):
        """On upload: the CLI's image checks; the prepared target, or one line saying what is wrong."""
        if not photo:
            return None, views.line("")
        try:
            target = runs.check_sketch_inputs(settings, photo, mask, mask_object)
        except Exception as e:  # noqa: BLE001 - the page shows one line, whatever it is
            return None, views.line(one_line(e, {str(p): Path(p).name for p in (photo, mask) if p}), "error")
        return Image.fromarray(to_uint8(target)), views.line(f"{Path(photo).name}: ready", "ok")

    # ----------------------------------------------------------- sketch
    def sketch_job(photo, mask, mask_object, preset, strokes, seeds, steps, clip_model, clip_weights, attention,
                   text, text_weight, force_sparse, num_segments, request: gr.Request):
        form = SketchForm(photo, mask, mask_object, preset, strokes, seeds, steps, clip_model, clip_weights,
                          attention, text, text_weight, force_sparse, num_segments)
        run_dir = runs.fresh_dir(settings, "sketch")
        job = start_job(request, runs.sketch_work(settings, form, run_dir))
        try:
            yield {s_status: views.line(f"running in {run_dir}"), s_svg: "", s_files: None, s_progress: "starting…"}
            seen, shown = -1, 0.0
            while job.alive():
                time.sleep(POLL_S)
                p = job.watcher.snapshot()
                update = {}
                if p.version != seen:
                    seen = p.version
                    best, row = views.seed_pictures(p)
                    if best is not None:
                        update.update({s_preview: best, s_seeds_img: row, s_curve: views.loss_frame(p)})
                if update or time.monotonic() - shown > 1.0:
                    shown = time.monotonic()
                    update[s_progress] = views.line(views.progress_line(p))
                    yield update
            status = finished_line(job, run_dir, "sketch")
            p = job.watcher.snapshot()
            final = {s_status: status, s_progress: views.line(views.progress_line(p))}
            best, row = views.seed_pictures(p)
            if best is not None:
                final.update({s_preview: best, s_seeds_img: row, s_curve: views.loss_frame(p)})
            if (run_dir / "best.svg").is_file():
                final.update({s_svg: views.inline_svg(run_dir / "best.svg", views.best_caption(run_dir)),
                              s_files: sketch_downloads(run_dir)})
            yield final
        finally:  # also when the page goes away: the job ends before the next one starts
            end_job(request, job)

    # ----------------------------------------------------------- abstraction
    def abstraction_job(photo, seeds, steps, request: gr.Request):
        d = settings.form_defaults()
        form = SketchForm(photo, None, False, "app default", 16, seeds, steps, d["clip_model"], d["clip_weights"])
        job_dir = runs.fresh_dir(settings, "abstraction")
        job = start_job(request, runs.abstraction_work(settings, form, job_dir))
        try:
            yield {a_status: views.line(f"running in {job_dir}"), a_files: None}
            seen, shown = None, 0.0
            while job.alive():
                time.sleep(POLL_S)
                p = job.watcher.snapshot()
                key = (job.current, p.version)
                if key != seen or time.monotonic() - shown > 1.0:
                    seen, shown = key, time.monotonic()
                    yield {a_row: abstraction_row(job_dir, job, p),
                           a_progress: views.line(views.progress_line(p, f"{job.current} strokes: " if job.current else ""))}
            status = finished_line(job, job_dir, "abstraction")
            files = [str(zip_folder(job_dir, job_dir.parent / f"{job_dir.name}.zip"))] if job_dir.is_dir() else None
            done = [n for n in runs.ABSTRACTION_STROKES if (job_dir / f"strokes{n}" / "summary.json").is_file()]
            yield {a_status: status, a_row: abstraction_row(job_dir, job, None), a_files: files,
                   a_progress: views.line(f"runs finished: {', '.join(map(str, done)) or 'none'} strokes")}
        finally:  # also when the page goes away: the job ends before the next one starts
            end_job(request, job)

    def abstraction_row(job_dir: Path, job: Job, live) -> Image.Image:
        tiles, captions = [], []
        for n in runs.ABSTRACTION_STROKES:
            best = job_dir / f"strokes{n}" / "best.png"
            if best.is_file() and (job.current != n or not job.alive()):
                with Image.open(best) as im:
                    tiles.append(im.convert("RGB").copy())
                captions.append(f"{n} strokes")
            elif live is not None and job.current == n and live.sketches is not None:
                tiles.append(views.seed_pictures(live)[0])
                captions.append(f"{n} strokes (step {live.step})")
            else:
                tiles.append(Image.new("RGB", (224, 224), (235, 235, 235)))
                captions.append(f"{n} strokes (waiting)")
        return views.side_by_side(tiles, captions)

    # ----------------------------------------------------------- scene
    def scene_matrix(root: Path) -> tuple[Image.Image, int]:
        tiles, captions = {}, {}
        for r, layer in enumerate(layers):
            for c in range(levels):
                png = cell_dir(root, layer, c) / "combined.png"
                if png.is_file():
                    try:
                        with Image.open(png) as im:
                            tiles[(r, c)] = im.convert("RGB").copy()
                        captions[(r, c)] = "done"
                    except OSError:  # being written (atomic rename): next poll
                        pass
        picture = matrix_picture(tiles, [f"layer {x}" for x in layers], [f"level {k}" for k in range(levels)],
                                 captions, tile, title="rows = fidelity (ViT block), columns = simplicity")
        return picture, len(tiles)

    def scene_job(photo, mask, request: gr.Request):
        root = runs.fresh_dir(settings, "scene")
        job = start_job(request, runs.scene_work(settings, photo, mask, root), stop_raises=True)
        try:
            yield {c_status: views.line(f"running in {root}"), c_files: None}
            seen, shown = -1, 0.0
            total = len(layers) * levels
            while job.alive():
                time.sleep(POLL_S)
                picture, done = scene_matrix(root)
                p = job.watcher.snapshot()
                if done != seen or time.monotonic() - shown > 1.0:
                    seen, shown = done, time.monotonic()
                    yield {c_matrix: picture,
                           c_progress: views.line(f"cells {done} / {total} · this stage: step {p.step} / {p.max_steps}")}
            status = finished_line(job, root, "scene matrix")
            picture, done = scene_matrix(root)
            files = [str(root / n) for n in ("matrix.png", "summary.json") if (root / n).is_file()]
            if root.is_dir():
                files.append(str(zip_folder(root, root.parent / f"{root.name}.zip")))
            yield {c_status: status, c_matrix: picture, c_progress: views.line(f"cells {done} / {total}"), c_files: files}
        finally:  # also when the page goes away: the job ends before the next one starts
            end_job(request, job)

    # ----------------------------------------------------------- layout
    with gr.Blocks(title="clipasso-pl", analytics_enabled=False) as demo:
        gr.Markdown("## clipasso-pl: sketch a photo with CLIP-guided strokes")
        with gr.Tab("Sketch", id="sketch"):
            with gr.Row():
                with gr.Column(scale=1):
                    s_photo = gr.File(label="Photo", file_types=["image"], type="filepath", elem_id="sketch-photo")
                    s_mask = gr.File(label="Mask (optional, white = object)", file_types=["image"], type="filepath",
                                     elem_id="sketch-mask")
                    s_mask_object = gr.Checkbox(label="mask_object: mask from the photo's alpha (else rembg U2Net)")
                    s_target = gr.Image(label="Target as the run sees it", type="pil", interactive=False, height=200,
                                        elem_id="sketch-target")
                    s_check = gr.HTML(elem_id="sketch-upload-status")
                with gr.Column(scale=1):
                    s_preset = gr.Radio(list(runs.PRESETS), value="app default", label="Preset")
                    s_strokes = gr.Dropdown(list(runs.STROKE_CHOICES), value=defaults["strokes"], label="Strokes",
                                            allow_custom_value=True, elem_id="sketch-strokes")
                    s_seeds = gr.Textbox(defaults["seeds"], label="Seeds", elem_id="sketch-seeds")
                    s_steps = gr.Number(defaults["steps"], label="Steps", precision=0, elem_id="sketch-steps")
                    with gr.Row():
                        s_clip = gr.Dropdown(list(runs.clip_groups()), value=defaults["clip_model"], label="CLIP model")
                        s_weights = gr.Textbox(defaults["clip_weights"], label="CLIP weights (openai, a file, random)")
                    with gr.Accordion("Official options", open=False):
                        s_attention = gr.Checkbox(label="mask_object_attention: start strokes on the object only")
                        with gr.Row():
                            s_text = gr.Textbox(label="Text guidance prompt (text_target)")
                            s_text_weight = gr.Number(0.0, label="Text weight (clip_text_guide)")
                        s_sparse = gr.Checkbox(label="force_sparse: train each stroke's opacity")
                        s_segments = gr.Number(defaults["num_segments"], label="num_segments", precision=0)
                    with gr.Row():
                        s_start, s_stop = start_stop("sketch")
            s_status = gr.HTML(elem_id="sketch-status")
            s_progress = gr.HTML(elem_id="sketch-progress")
            with gr.Row():
                s_preview = gr.Image(label="Best seed (live)", type="pil", format="png", interactive=False,
                                     height=260, elem_id="sketch-preview")
                s_curve = gr.LinePlot(None, x="step", y="eval loss", color="seed",
                                      label="Eval loss", elem_id="sketch-curve", height=260)
            s_seeds_img = gr.Image(label="All seeds (red: best)", type="pil", format="png", interactive=False,
                                   elem_id="sketch-seed-row", height=200)
            with gr.Row():
                s_svg = gr.HTML(label="best.svg", elem_id="sketch-svg")
                s_files = gr.File(label="Downloads", file_count="multiple", interactive=False,
                                  elem_id="sketch-downloads")
        with gr.Tab("Abstraction", id="abstraction"):
            gr.Markdown("One photo at 4, 8, 16 and 32 strokes, side by side: one job, four runs.")
            with gr.Row():
                a_photo = gr.File(label="Photo", file_types=["image"], type="filepath", elem_id="abs-photo")
                with gr.Column():
                    a_seeds = gr.Textbox(defaults["seeds"], label="Seeds")
                    a_steps = gr.Number(defaults["steps"], label="Steps per run", precision=0,
                                        elem_id="abs-steps")
                    with gr.Row():
                        a_start, a_stop = start_stop("abs")
            a_status, a_progress, a_row, a_files = job_results("abs", "4 / 8 / 16 / 32 strokes", "abs-row")
        with gr.Tab("Scene", id="scene"):
            gr.Markdown("A photo with a mask, or an RGBA image (alpha = object): the fidelity × simplicity matrix, "
                        "cell by cell.")
            with gr.Row():
                c_photo = gr.File(label="Scene photo (RGBA, or with a mask)", file_types=["image"], type="filepath",
                                  elem_id="scene-photo")
                c_mask = gr.File(label="Mask (optional, white = object)", file_types=["image"], type="filepath",
                                 elem_id="scene-mask")
                with gr.Column():
                    c_start, c_stop = start_stop("scene")
            c_status, c_progress, c_matrix, c_files = job_results("scene", "Fidelity × simplicity", "scene-matrix")

        # ------------------------------------------------------- events
        form_controls = [s_strokes, s_seeds, s_steps, s_clip, s_weights, s_segments]

        def apply_preset(preset):
            v = settings.preset_values(preset)
            return [v["strokes"], v["seeds"], v["steps"], v["clip_model"], v["clip_weights"], v["num_segments"]]

        s_preset.change(apply_preset, s_preset, form_controls, concurrency_limit=None)
        for trigger in (s_photo.change, s_mask.change, s_mask_object.change):
            trigger(check_photo, [s_photo, s_mask, s_mask_object], [s_target, s_check], concurrency_limit=None,
                    show_progress="hidden")
        s_outputs = [s_status, s_progress, s_preview, s_seeds_img, s_curve, s_svg, s_files]
        s_start.click(sketch_job, [s_photo, s_mask, s_mask_object, s_preset, s_strokes, s_seeds, s_steps, s_clip,
                                   s_weights, s_attention, s_text, s_text_weight, s_sparse, s_segments],
                      s_outputs, concurrency_limit=1, concurrency_id=DEVICE, show_progress_on=[s_preview],
                      show_progress="full")
        a_start.click(abstraction_job, [a_photo, a_seeds, a_steps], [a_status, a_progress, a_row, a_files],
                      concurrency_limit=1, concurrency_id=DEVICE, show_progress_on=[a_row])
        c_start.click(scene_job, [c_photo, c_mask], [c_status, c_progress, c_matrix, c_files],
                      concurrency_limit=1, concurrency_id=DEVICE, show_progress_on=[c_matrix])
        for button, status in ((s_stop, s_status), (a_stop, a_status), (c_stop, c_status)):
            button.click(stop, None, status, concurrency_limit=None, queue=False)
    return demo
