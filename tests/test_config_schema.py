"""The schema (clipasso_pl.config.SCHEMA): every key of every command has a type and a range, and a bad
value is one line naming the key, refused before any model loads. The cases are generated from the
schema itself, so a key added there is covered here without a new test."""

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


# Every case goes through the real CLI entry, in-process (about 0.2 s each: compose and validate, no
# model loads): one line on stderr naming the key and where it is documented, exit 2, no run directory.
@pytest.mark.parametrize("command, key, bad", CASES)
def test_cli_refuses_a_bad_value_in_one_line(command, key, bad, composed, capsys, tmp_path):
    overrides = next(ov for ov, c in composed[command] if has(c, key))
    with pytest.raises(SystemExit) as info:
        cli.main([command, *overrides, f"{key}={bad}", f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert info.value.code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: ") and f"{key}=" in lines[0] and "(see configs/" in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before Hydra made the run directory


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
    """The CLI checks a config before torch loads: config.py and the one home of the choice lists
    (clipasso_pl.choices, imported by the schema and by the code that acts on a value) stay torch-free."""
    code = "import sys, clipasso_pl.config, clipasso_pl.choices; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
