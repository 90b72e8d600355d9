"""``compile=step``: the training step's device work (render, augment, CLIP towers, loss) as one
graph with ``fullgraph=True``, its backward through AOTAutograd; loss terms and gradients as eager.

The CPU test uses the ``aot_eager`` backend: the same dynamo capture and AOTAutograd joint graph as
inductor, compiled in seconds (inductor's C++ compile takes minutes on a 2-core CPU).
"""

import pytest
import torch

from clipasso_pl.api import build_module
from clipasso_pl.config import compose
from clipasso_pl.errors import ClipassoError
from clipasso_pl.images import resolve_target
from clipasso_pl.sketch_target import load_target

TARGET = "skimage:coffee"
TOL = 1e-5


def tiny_module(*overrides):
    cfg = compose("sketch", ["preset=smoke", "init=random", "init.pretrained=null", *overrides], target=TARGET,
                  logger="none", seeds=[0, 1000])
    module = build_module(cfg, load_target(resolve_target(TARGET), size=int(cfg.canvas)))
    module.initialize()
    return module


def terms_and_grad(module, fn, views):
    module.points.grad = None
    points, opacities = module.visible()
    terms = fn(points, opacities, views)
    (terms["loss"] * module.active).sum().backward()
    return {k: v.detach() for k, v in terms.items()}, module.points.grad.clone()


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [[], ["num_segments=2", "force_sparse=true", "clip_text_guide=1.0",
                                            "text_target='a cat'"]], ids=["default", "options"])
def test_step_compiles_as_one_graph_with_eager_loss_terms(overrides):
    torch._dynamo.reset()
    module = tiny_module("compile=step", "compile_backend=aot_eager", *overrides)
    views = module.augment.device_params(module.augment_generators, module.height, module.width,
                                         module.points.device, module.points.dtype)  # the same draws for both
    points, opacities = module.visible()
    explained = torch._dynamo.explain(module.step_terms)(points, opacities, views)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    eager, eager_grad = terms_and_grad(module, module.step_terms, views)
    compiled_fn = module.step_function()  # fullgraph=True: a graph break would raise here
    assert compiled_fn is not module.step_terms
    compiled, grad = terms_and_grad(module, compiled_fn, views)
    assert set(compiled) == set(eager)
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], rtol=TOL, atol=TOL, msg=k)
    torch.testing.assert_close(grad, eager_grad, rtol=1e-4, atol=1e-6)


def test_compile_backend_is_checked():
    with pytest.raises(ClipassoError, match="compile_backend=nonsense"):
        tiny_module("compile=step", "compile_backend=nonsense")


@pytest.mark.slow
def test_compiled_run_keeps_one_graph_through_its_evals(tmp_path):
    """A whole compiled run through the installed command, evals every 5 steps. The graph read the
    renderer's float sizes and whether its peak was None, so every eval's refit recompiled it and the
    ninth recompile ended the run (dynamo's recompile limit under fullgraph=True). Now the sizes reach
    the graph as ints fixed before each step, and they only grow: no recompile, no skipped step."""
    import json

    from cli_runs import cli

    run = tmp_path / "run"
    res = cli("sketch", "preset=smoke", "compile=step", "compile_backend=aot_eager", "steps=60", "eval_interval=5",
              "logger=none", f"hydra.run.dir={run}", env={"TORCH_LOGS": "recompiles"}, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps_run"] == 60 and summary["skipped_steps"] == 0
    assert (res.stdout + res.stderr).count("Recompiling function step_terms") == 0
