"""The configs of every command: composing them (``compose``), their schema (``SCHEMA``, ``doc_of``,
``BENCH_VARIANTS``) and checking them (``validate``). Torch-free: the CLI checks a config before any
model loads.

``compose`` (composing, :mod:`.compose`) → ``validate`` (:mod:`.validate`) → the key tables
(:mod:`.schema`) → the type of one value (:mod:`.spec`).
"""

from .compose import compose, config_dir, expand_images
from .schema import BENCH_VARIANTS, SCHEMA, doc_of
from .validate import validate

__all__ = ["BENCH_VARIANTS", "SCHEMA", "compose", "config_dir", "doc_of", "expand_images", "validate"]
