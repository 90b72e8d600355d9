"""Full-step benchmark: ``clipasso-pl bench [key=value ...]`` (``make bench``).

For each CLIP model (random weights), number of seeds S and speed variant (configs/bench.yaml)
it times the training step of :class:`SketchModule` on the chosen device:

- **phases**: the step's own code (render, augment, target forward, sketch forward + loss,
  backward, Adam with the non-finite/stopped-seed selects, and the eval every
  ``eval_interval`` steps, amortised) in a plain loop, with a device synchronisation around
  every phase on even steps and around the whole step on odd steps (same machine load):
  the per-phase medians of a training step should sum to the median whole step
  (``phases_over_step``, within 10 % on a CPU).
- **bare**: the step as ``training_step`` runs it (one graph with ``compile=step``, whose rows have
  no phases), with no synchronisation inside the timed span (the real pipelining).
- **ops per step**: the aten ops, kernels (about the launches on a GPU) and host syncs of one
  training step that is not an eval step, recorded once with ``syncs.SyncRecorder``, untimed.
- **trainer**: the same module through the Lightning Trainer with the configured callbacks
  (logging, snapshots, best sketch, early stopping, checkpoints) and a CSV logger. Its
  *fixed overhead* is the host time of each step spent outside ``training_step`` ..
  ``optimizer_step`` (Lightning's loop, hooks, callbacks, logging, progress bar): median per
  step, and mean (which includes the interval work: snapshots, log writes, checkpoints);
  *trainer - bare* is the same overhead seen as a difference of two noisy step times.

Step times are the mean over whole eval intervals after ``warmup`` steps, synchronised at
both ends, and the median of per-step times. Writes ``<out>.json`` and a markdown table
``<out>.md``. ``clipasso-pl bench bench=render [--flags]`` runs the renderer benchmark.

Where each part lives: ``timing.py`` (the clock: step marks, medians, the phase names),
``loops.py`` (the timed loops: phased and bare, ops per step, through the Trainer; one row),
``table.py`` (the machine description and the markdown table), ``run.py`` (the rows of
a config: device, variants, the written files; the command's ``main``).
"""
