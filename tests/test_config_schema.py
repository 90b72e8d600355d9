"""The schema (clipasso_pl.config.SCHEMA): every key of every command has a type and a range, and a bad
value is one line naming the key, refused before any model loads. The cases are generated from the
schema itself, so a key added there is covered here without a new test."""

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from clipasso_pl import cli
from clipasso_pl.config import SCHEMA, compose, config_dir, doc_of, validate
from clipasso_pl.errors import ClipassoError
import cli_runs

REPO = Path(__file__).resolve().parents[1]


def groups_of(name: str) -> list[str]:
    """The config groups in the defaults list of configs/<name>.yaml, through the primary configs it
    builds on (bench.yaml starts from sketch.yaml) and ``override`` entries."""
    groups: list[str] = []
    for d in yaml.safe_load((config_dir() / f"{name}.yaml").read_text()).get("defaults", []):
        if isinstance(d, str) and d != "_self_" and (config_dir() / f"{d}.yaml").is_file():
            found = groups_of(d)
        elif isinstance(d, dict):
            found = [next(iter(d)).removeprefix("override ")]
        else:
            found = []
        groups += [g for g in found if g not in groups]
    return groups


def compositions(command: str) -> list[list[str]]:
    """Compositions of ``command`` that together pick every option of every config group in its
    defaults list (composition i takes option i of each group), so every YAML key of the command
    appears in one of them."""
    options = {g: [p.stem for p in sorted((config_dir() / g).glob("*.yaml"))] for g in groups_of(command)
               if "/" not in g and not g.startswith("optional") and (config_dir() / g).is_dir()}
    own = config_dir() / command / "preset"  # scene/, bench/: a preset of their own keys, when it has a file there
    if "preset" in options and own.is_dir():
        options["preset"] = [p for p in options["preset"] if (own / f"{p}.yaml").is_file()]
    out = [[f"{g}={opts[i]}" for g, opts in options.items() if i < len(opts)]
           for i in range(max(len(o) for o in options.values()))]
    return [[]] + out


_ABSENT = object()


def has(cfg, key: str) -> bool:
    return OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT


@pytest.fixture(scope="module")
def composed():
    """command -> [(overrides, composed config)] for every composition (each is checked by compose)."""
    return {command: [(ov, compose(command, ov)) for ov in compositions(command)] for command in SCHEMA}


def cases():
    """(command, key, bad value) for every key of every command: one of the wrong type, one out of range."""
    for command, schema in SCHEMA.items():
        for key, spec in schema.items():
            yield command, key, spec.wrong_type()
            if spec.out_of_range() is not None:
                yield command, key, spec.out_of_range()


def test_every_yaml_key_has_a_schema_entry_and_every_composition_passes(composed):
    for command, configs in composed.items():
        assert len(configs) >= 5 and len(configs[1][0]) >= 5, (command, [ov for ov, _ in configs])  # groups found
        for overrides, cfg in configs:
            validate(cfg, command)  # compose already did; a YAML key without a schema entry fails there


def test_a_yaml_key_without_schema_entry_fails_composing(tmp_path):
    cfg = compose("sketch", ["preset=smoke"], check=False)
    OmegaConf.set_struct(cfg, False)
    cfg.clip.new_switch = True  # what a YAML key nobody added to SCHEMA looks like
    with pytest.raises(ClipassoError, match=r"clip\.new_switch is not a key of clipasso-pl sketch.*SCHEMA"):
        validate(cfg, "sketch")


def test_every_number_has_a_range_and_every_key_a_doc():
    for command, schema in SCHEMA.items():
        for key, spec in schema.items():
            kinds = [o.kind for o in spec.options] if spec.kind == "any" else [spec.kind]
            if any(k in ("int", "float", "int_list", "float_list") for k in kinds):
                assert spec.out_of_range() is not None, f"{command}: {key} is a number without a range"
            doc = REPO / doc_of(command, key)
            files = sorted(doc.glob("*.yaml")) if doc.is_dir() else [doc]
            leaf = re.compile(rf"^\s*{re.escape(key.rsplit('.', 1)[-1])}:", re.M)
            # the key is written (and commented) there
            assert any(leaf.search(f.read_text()) for f in files if f.is_file()), (command, key, doc)


CASES = list(cases())


def test_the_cases_cover_every_key():
    assert len(CASES) > 300
    assert {(c, k) for c, k, _ in CASES} == {(c, k) for c, schema in SCHEMA.items() for k in schema}


def apply_override(cfg, key: str, text: str) -> None:
    """``key=text`` applied to a composed config as Hydra applies a command-line override: its parser
    turns the text into a value (``abc`` a string, ``[1,2]`` a list, ``{a:1}`` a mapping), then an update."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    value = OverridesParser.create().parse_overrides([f"{key}={text}"])[0].value()
    OmegaConf.update(cfg, key, value, merge=True)


def refusal(command: str, cfg, key: str, text: str) -> str:
    """The one-line message ``validate`` (the check the CLI runs before Hydra starts) gives for ``key=text``."""
    cfg = copy.deepcopy(cfg)
    apply_override(cfg, key, text)
    with pytest.raises(ClipassoError) as info:
        validate(cfg, command)
    return str(info.value)


# Every case through the validator in process (milliseconds each: the composed configs are reused): one
# line naming the key, the value and where the key is documented.
@pytest.mark.parametrize("command, key, bad", CASES)
def test_the_schema_refuses_a_bad_value_in_one_line(command, key, bad, composed):
    cfg = next(c for ov, c in composed[command] if has(c, key))
    message = refusal(command, cfg, key, bad)
    assert "\n" not in message and f"{key}=" in message and "(see configs/" in message, message


def one_case_per_kind(command: str = "sketch") -> list[tuple[str, str, str]]:
    """One case of each kind of value (int, float, bool, str, the lists, any) of ``command``."""
    picked: dict[str, tuple[str, str, str]] = {}
    for c, key, bad in CASES:
        if c == command:
            picked.setdefault(SCHEMA[c][key].kind, (c, key, bad))
    return [picked[k] for k in sorted(picked)]


def check_cli_refusal(command, key, bad, composed, tmp_path) -> None:
    """The installed command refuses ``key=bad``: exit 2, the validator's one line after "error: " on stderr,
    no traceback, and no run directory (refused before Hydra made it)."""
    overrides, cfg = next((ov, c) for ov, c in composed[command] if has(c, key))
    res = cli_runs.cli(command, *overrides, f"{key}={bad}", f"hydra.run.dir={tmp_path / 'run'}", timeout=300)
    line = cli_runs.one_line_error(res, f"{key}=")
    assert line == "error: " + refusal(command, cfg, key, bad)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command, key, bad", one_case_per_kind())
def test_the_cli_refuses_a_bad_value_of_each_kind(command, key, bad, composed, tmp_path):
    check_cli_refusal(command, key, bad, composed, tmp_path)


@pytest.mark.slow  # these commands import torch before refusing: a few seconds each
@pytest.mark.parametrize("command", [c for c in SCHEMA if c != "sketch"])
def test_the_cli_refuses_a_bad_value_of_every_command(command, composed, tmp_path):
    check_cli_refusal(*one_case_per_kind(command)[0], composed, tmp_path)


def test_sketch_has_every_kind_of_value():
    kinds = {spec.kind for schema in SCHEMA.values() for spec in schema.values()}
    assert {SCHEMA[c][k].kind for c, k, _ in one_case_per_kind()} == kinds


# The method's limits, written out (the generated cases above follow SCHEMA, so a wrong bound there moves
# its case with it): (command, override, refused).
BOUNDARIES = [
    ("sketch", "strokes=0", True), ("sketch", "strokes=1", False),
    ("scene", "strokes=0", True), ("scene", "strokes=1", False),
    ("scene", "object_fraction=0", True), ("scene", "object_fraction=1", False),
    ("scene", "offset_scale=0", False), ("scene", "offset_scale=-0.1", True),
    ("scene", "simplicity.keep_threshold=0", True), ("scene", "simplicity.keep_threshold=1", True),
    ("scene", "simplicity.keep_threshold=0.5", False), ("scene", "simplicity.temperature=0", True),
    ("scene", "levels=0", True), ("scene", "hidden=0", True), ("scene", "width_lr=0", True),
    ("scene", "parts=[]", True), ("scene", "parts=[background,background]", True),
    ("scene", "layers=[1,1]", True), ("scene", "simplicity.step_layers=[0]", True),  # step sizes must match
    ("sketch", "control_points_per_seg=1", True), ("sketch", "control_points_per_seg=5", True),
    ("sketch", "control_points_per_seg=2", False), ("sketch", "num_segments=0", True),
    ("sketch", "num_stages=0", True), ("sketch", "half_width=0", True), ("sketch", "lr=0", True),
    ("sketch", "augment.crop_scale=0", True), ("sketch", "augment.crop_scale=1", False),
    ("sketch", "augment.distortion_scale=1", False), ("sketch", "augment.distortion_scale=1.01", True),
    ("sketch", "augment.num_augs=0", False), ("sketch", "color_vars_threshold=1", False),
    ("sketch", "color_vars_threshold=1.5", True), ("sketch", "seeds=[]", True), ("sketch", "seeds=[0,0]", True),
    ("sketch", "eval_interval=0", False), ("sketch", "clip_text_guide=1", True),  # needs text_target
    ("sketch", "mask_object_attention=true", True),  # needs a mask
    ("sketch", "trainer.precision=16-mixed", True), ("sketch", "clip.conv_layer_weights=[1,1,1,1]", True),
    ("evaluate", "eval.ci_level=1", True), ("evaluate", "eval.ci_level=0", True),
    ("evaluate", "eval.ci_level=0.95", False), ("evaluate", "levels=[0]", True), ("evaluate", "shard=1", True),
    ("bench", "bench.repeats=0", True), ("bench", "bench.warmup=0", False), ("bench", "bench.run=[fp64]", True),
]


@pytest.fixture(scope="module")
def smoke_configs():
    return {command: compose(command, ["preset=smoke"]) for command in SCHEMA}


@pytest.mark.parametrize("command, override, refused", BOUNDARIES)
def test_the_boundaries_of_the_method(command, override, refused, smoke_configs):
    key, text = override.split("=", 1)
    cfg = copy.deepcopy(smoke_configs[command])
    apply_override(cfg, key, text)
    if refused:
        with pytest.raises(ClipassoError, match=re.escape(key)):
            validate(cfg, command)
    else:
        validate(cfg, command)


@pytest.mark.parametrize("value, message", [
    ("strokes=abc", "strokes=abc is not an integer"),
    ("strokes=1.5", "strokes=1.5 is not an integer"),  # never truncated to 1
    ("lr=-1", "lr=-1 is out of range"),
    ("lr=inf", "lr=inf is not finite"),
    ("canvas=0", "canvas=0 is out of range"),
    ("seeds=[0,0]", "seeds=[0,0] repeats"),
    ("clip.conv_layer_weights=[1,1]", "has 5 layers"),
    ("steps=${nothing}", "steps=${nothing} does not resolve"),
])
def test_named_examples(value, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        cli.main(["sketch", "preset=smoke", value, f"hydra.run.dir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_numbers_are_typed_after_validation():
    cfg = compose("sketch", ["preset=smoke", "lr=2", "half_width=1", "clip.conv_layer_weights=[0,0,1,1,0]"])
    assert isinstance(cfg.lr, float) and isinstance(cfg.half_width, float)
    assert all(isinstance(w, float) for w in cfg.clip.conv_layer_weights)
    assert compose("sketch", ["clip.fc_weight=nan"]).clip.fc_weight != 0  # NaN passes: the non-finite guard's test


def test_saved_and_built_configs_are_checked_too(tmp_path):
    """run_sketch checks what it is given (a resumed run's config.yaml, an evaluate job), not only the CLI."""
    from clipasso_pl.api import run_sketch

    cfg = compose("sketch", ["preset=smoke"], check=False)
    cfg.strokes = 0
    with pytest.raises(ClipassoError, match="strokes=0"):
        run_sketch(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_schema_and_its_choice_lists_import_no_torch():
    """The CLI checks a config before torch loads: the config package and the one home of the choice lists
    (clipasso_pl.choices, imported by the schema and by the code that acts on a value) stay torch-free."""
    code = "import sys, clipasso_pl.config, clipasso_pl.choices; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
