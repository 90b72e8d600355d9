"""``clipasso-pl app``: a local web app (Gradio) that runs the CLI's sketch and scene runs and watches them.

- :mod:`.watch`: the Lightning callback that records evals for the page and stops a run;
- :mod:`.jobs`: a job in a worker thread, one-line errors, the run folder as a zip;
- :mod:`.runs`: the form's choices as configs and the work of each job (no Gradio);
- :mod:`.views`: pictures and lines of text the page shows;
- :mod:`.ui`: the page (Gradio Blocks); :mod:`.server`: the command line and the launch.
"""
