"""Lightning callbacks around the sketching modules; each reads the module only through
:mod:`clipasso_pl.training.contract` and writes under the run directory from global rank 0.

files: ``SaliencyInit``, ``SketchSnapshot`` and the sketch-file helpers; best: ``BestSketch``;
loss_logger: ``LayerLossLogger``; stopping: ``EvalEarlyStopping``, ``PeriodicCheckpoint``;
media: ``WandbMedia``, ``ProgressAnimation``. The config group ``configs/callbacks/`` builds
them by these module paths.
"""
