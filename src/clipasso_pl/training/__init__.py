"""The parts the two sketching LightningModules are built from (``module.SketchModule`` and
``scene.module.SceneSketchModule``), each a concept of its own:

- ``contract``: the Protocols the callbacks read (``Sketcher``, ``PointSketcher``, ``Evaluation``);
- ``sketching``: ``SketchingModule``, the base both modules share (frozen CLIP, target, renderer);
- ``objective``: the augment -> CLIP -> loss step; ``records``: what one eval leaves;
- ``optim``: fused Adam on the points, the on-device skip of a non-finite step, resume across devices;
- ``nonfinite``: counting skipped steps on the device; ``stages``: strokes added in stages;
- ``ddp``: what the ranks agree on; ``steps``: the step-index data loader;
- ``compiled``: the renderer's sizes fixed outside a compiled step's graph.
"""
