"""``surgery patch --preset`` and ``--config``: what each preset sets, the precedence explicit > config >
preset > defaults, the option file's checks, and a run repeated from its ``<patch>.config.yaml``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors import safe_open

from surgery import recipes
from surgery.cli import main
from surgery.commands.core import PatchIO, patch_command
from surgery.errors import OptionError
from surgery.hcnr.options import PatchOptions
from surgery.hcnr.pipeline import make_patch
from surgery.hcnr.presets import CLI_PRESET, PRESETS, differing_values, preset_values, resolve_options
from surgery.option_file import dump_options, load_option_file
from surgery.patchfile import PatchManifest
from tests.support.faults import assert_one_error_line, cli

RECIPE = recipes.ROOT / "smollm2" / "recipe.json"


# ---------------------------------------------------------------- the presets themselves


def test_paper_is_the_method_defaults_and_the_library_keeps_them():
    assert resolve_options("paper").options == PatchOptions()
    defaults = PatchOptions()  # golden patches depend on these: the CLI's preset must not move them
    assert (defaults.compensation, defaults.r_iw, defaults.r_cw) == ("exact", 0.5, 0.4)


def test_recommended_is_the_demo_recipes_patch():
    """The recipe's "patch" was measured best for keeping the task (docs/results/comparison.md)."""
    assert PRESETS["recommended"] == json.loads(RECIPE.read_text(encoding="utf-8"))["patch"]
    assert CLI_PRESET == "recommended"


def test_compact_is_the_five_percent_shape():
    o = resolve_options("compact").options
    assert o.compensation == "protect" and o.r_iw * o.r_cw <= 0.05 + 1e-12
    sizes = {name: resolve_options(name).options for name in PRESETS}
    assert sizes["compact"].r_iw * sizes["compact"].r_cw < sizes["recommended"].r_iw * sizes["recommended"].r_cw


def test_every_preset_builds_valid_options_and_names_only_fields():
    fields = set(PatchOptions().to_dict())
    for name, values in PRESETS.items():
        assert set(values) <= fields, name
        assert resolve_options(name).preset == name


def test_an_unknown_preset_is_one_sentence():
    with pytest.raises(OptionError, match="--preset must be one of paper, recommended, compact"):
        preset_values("fast")
    with pytest.raises(OptionError, match="--preset must be one of"):
        resolve_options(None, {"preset": ["a", "list"]})


# ---------------------------------------------------------------- precedence


def test_explicit_over_config_over_preset_over_defaults():
    config = {"r_iw": 0.3, "max_samples": 64, "compensation": "none"}
    explicit = {"r_iw": 0.2, "compensation": None, "seed": None}  # None: not given on the command line
    r = resolve_options("compact", config, explicit)
    assert r.preset == "compact"
    assert r.options.r_iw == 0.2  # explicit beats the config
    assert r.options.compensation == "none" and r.options.max_samples == 64  # config beats the preset
    assert r.options.r_cw == PRESETS["compact"]["r_cw"]  # the preset beats the defaults
    assert r.options.seed == PatchOptions().seed  # the defaults fill the rest


def test_the_preset_name_comes_from_the_command_line_else_the_config_else_the_default():
    assert resolve_options().preset == CLI_PRESET
    assert resolve_options(None, {"preset": "paper"}).preset == "paper"
    assert resolve_options("compact", {"preset": "paper"}).preset == "compact"
    assert resolve_options(default_preset="paper").options == PatchOptions()


def test_an_unknown_option_in_the_mapping_is_refused():
    with pytest.raises(OptionError, match="unknown patch option 'r_iv'"):
        resolve_options("paper", {"r_iv": 0.1})


def test_config_form_holds_the_preset_and_every_option():
    r = resolve_options("compact", {"seed": 3})
    config = r.to_config()
    assert config["preset"] == "compact" and config["seed"] == 3
    assert set(config) == {"preset", *PatchOptions().to_dict()}
    assert resolve_options(None, config) == r  # read back, it is the same run


def test_help_notes_only_the_options_the_presets_differ_on():
    assert set(differing_values("r_iw")) == set(PRESETS)
    assert differing_values("seed") == {}


# ---------------------------------------------------------------- the option file


def test_yaml_and_json_with_either_spelling(tmp_path):
    yml = tmp_path / "o.yaml"
    yml.write_text("preset: compact\nr-iw: 0.25\n--max-samples: 32\nepsilon: 1e-12\nfisher_normalize: yes\n")
    got = load_option_file(yml, PatchOptions, extra_keys=("preset",))
    assert got == {"preset": "compact", "r_iw": 0.25, "max_samples": 32, "epsilon": 1e-12, "fisher_normalize": True}
    js = tmp_path / "o.json"
    js.write_text(json.dumps({"r_cw": 1, "compensation": "protect"}))
    got = load_option_file(js, PatchOptions)
    assert got == {"r_cw": 1.0, "compensation": "protect"} and isinstance(got["r_cw"], float)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing set\n")
    assert load_option_file(empty, PatchOptions) == {}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("r_iv: 0.1\n", "unknown option 'r_iv'"),
        ("r_iw: 0.1\nr-iw: 0.2\n", "given twice"),
        ("r_iw: abc\n", "'r_iw' must be a number"),
        ("max_samples: 1.5\n", "'max_samples' must be an integer"),
        ("max_samples: true\n", "'max_samples' must be an integer"),
        ("fisher_normalize: 1\n", "must be true or false"),
        ("compensation: 3\n", "must be a string"),
        ("- r_iw\n- 0.1\n", "must hold a mapping"),
        ("r_iw: [0.1\n", "not valid YAML"),
        ("preset: x\n", "unknown option 'preset'"),  # without extra_keys, preset is not an option
    ],
)
def test_bad_option_files_are_one_sentence(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(OptionError, match=words.replace("[", r"\[")):
        load_option_file(path, PatchOptions)


def test_missing_file_folder_and_bad_json(tmp_path):
    with pytest.raises(OptionError, match="does not exist"):
        load_option_file(tmp_path / "no.yaml", PatchOptions)
    with pytest.raises(OptionError, match="is a folder"):
        load_option_file(tmp_path, PatchOptions)
    bad = tmp_path / "bad.json"
    bad.write_text("{'r_iw': 0.1}")
    with pytest.raises(OptionError, match="not valid JSON"):
        load_option_file(bad, PatchOptions)


def test_yaml_tags_are_not_constructed(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("r_iw: !!python/object/apply:os.system ['echo owned']\n")
    with pytest.raises(OptionError, match="not valid YAML"):
        load_option_file(path, PatchOptions)


def test_dump_reads_back_to_the_same_values(tmp_path):
    values = resolve_options("paper").to_config()
    path = tmp_path / "o.yaml"
    path.write_text(dump_options(values, "first line\nsecond line"))
    assert path.read_text().startswith("# first line\n# second line\n")
    assert load_option_file(path, PatchOptions, extra_keys=("preset",)) == values


# ---------------------------------------------------------------- the command line, before any model

_PATCH = ["patch", "sft", "--honesty-data", "h.jsonl", "--task-data", "t.jsonl", "-o"]


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ("r_iv: 0.1\n", ("unknown option 'r_iv'",)),
        ("r_iw: 2\n", ("--r-iw",)),
        ("damp: .nan\n", ("--damp",)),
        ("preset: fast\n", ("--preset must be one of",)),
    ],
)
def test_a_bad_config_is_refused_before_any_model_is_read(tmp_path, config, words):
    path = tmp_path / "c.yaml"
    path.write_text(config)
    out = tmp_path / "p.safetensors"
    line = assert_one_error_line(cli(*_PATCH, str(out), "--config", str(path)))
    for w in words:
        assert w in line, line
    assert not out.exists() and not Path(str(out) + ".config.yaml").exists()


def test_an_unknown_preset_on_the_command_line_exits_2(tmp_path):
    res = cli(*_PATCH, str(tmp_path / "p.safetensors"), "--preset", "fast")
    assert res.exit_code == 2 and "fast" in res.output


def _help(*command: str) -> str:
    text = CliRunner().invoke(main, [*command, "--help"], catch_exceptions=False).output
    return " ".join(text.split())


def test_patch_help_names_the_presets_and_the_values_each_option_takes():
    text = _help("patch")
    assert "--preset [paper|recommended|compact]" in text and "[default: recommended]" in text
    assert "[default: 0.125 (--preset recommended); paper 0.5, compact 0.05]" in text
    assert "--config FILE" in text
    assert "[default: 128]" in text  # an option no preset sets shows its one value


def test_demo_help_shows_the_recipes_values():
    text = _help("demo")
    assert "[default: 0.125 with the smollm2 recipe; 0.5 with the gemma3_270m recipe]" in text
    assert "[default: protect with the smollm2 recipe; protect with the gemma3_270m recipe]" in text
    assert "[default: 0.5]" not in text.split("--r-iw", 1)[1].split("--r-cw", 1)[0]


def test_command_file_names_the_preset_only_when_given():
    io = PatchIO(honesty_data="h.jsonl", task_data="t.jsonl", output="p.safetensors")
    options = resolve_options("compact").options
    assert "--preset" not in patch_command("sft", io, options)
    assert " -o p.safetensors --preset compact --r-iw 0.05 " in patch_command("sft", io, options, preset="compact")


def test_manifest_records_the_preset_only_when_named():
    m = PatchManifest("surgery", "1", "HCNR", "b", "s", {}, {})
    assert "preset" not in m.to_dict()  # a library patch keeps the bytes it had
    named = PatchManifest("surgery", "1", "HCNR", "b", "s", {}, {}, preset="compact")
    assert named.to_dict()["preset"] == "compact"
    assert PatchManifest.from_dict(named.to_dict(), "manifest").preset == "compact"
    with pytest.raises(Exception, match="preset"):
        PatchManifest.from_dict({**named.to_dict(), "preset": 3}, "manifest")


# ---------------------------------------------------------------- end to end on a tiny pair


def _manifest(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["manifest"])


def _tensors(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_default_preset_run_records_it_and_its_config_repeats_the_run_byte_for_byte(tiny_pair, calib, tmp_path):
    base, sft, _ = tiny_pair
    args = ["patch", str(sft), "--base", str(base), "--honesty-data", str(calib[0]), "--task-data", str(calib[1])]
    first = tmp_path / "p.safetensors"
    res = cli(*args, "-o", str(first), "--max-samples", "8")
    assert res.exit_code == 0, res.output
    manifest = _manifest(first)
    assert manifest["preset"] == "recommended"
    expected = resolve_options("recommended", explicit={"max_samples": 8}).options.to_dict()
    # the preset's kind pooling is "auto"; the patch records what it became (this D_hon names no kinds: pooled),
    # the config keeps "auto", and both rerun to the same bytes
    assert expected["kind_pooling"] == "auto"
    assert manifest["options"] == {**expected, "kind_pooling": "pooled"}
    config = Path(str(first) + ".config.yaml")
    saved = load_option_file(config, PatchOptions, extra_keys=("preset",))
    assert saved == {"preset": "recommended", **expected}
    assert "--config" in config.read_text().splitlines()[1]  # the header says how to repeat the run
    assert "--preset recommended" in Path(str(first) + ".command.txt").read_text()
    shown = cli("inspect", str(first))
    assert "preset recommended" in shown.output

    again = tmp_path / "again.safetensors"
    res = cli(*args, "-o", str(again), "--config", str(config))
    assert res.exit_code == 0, res.output
    assert again.read_bytes() == first.read_bytes()

    # the config a rerun reads may be the one it rewrites; an explicit option wins over it
    res = cli(*args, "-o", str(first), "--config", str(config), "--r-cw", "0.5")
    assert res.exit_code == 0, res.output
    m = _manifest(first)
    assert (m["preset"], m["options"]["r_iw"], m["options"]["r_cw"]) == ("recommended", 0.125, 0.5)
    assert load_option_file(config, PatchOptions, extra_keys=("preset",))["r_cw"] == 0.5


def test_paper_preset_on_the_command_line_is_the_library_default_patch(tiny_pair, calib, tmp_path):
    base, sft, _ = tiny_pair
    lib, cmd = tmp_path / "lib.safetensors", tmp_path / "cli.safetensors"
    make_patch(str(sft), str(base), *calib, lib, PatchOptions(max_samples=8))
    args = ["patch", str(sft), "--base", str(base), "--honesty-data", str(calib[0]), "--task-data", str(calib[1])]
    res = cli(*args, "-o", str(cmd), "--preset", "paper", "--max-samples", "8")
    assert res.exit_code == 0, res.output
    m_lib, m_cmd = _manifest(lib), _manifest(cmd)
    assert "preset" not in m_lib and m_cmd.pop("preset") == "paper"
    assert m_lib == m_cmd
    t_lib, t_cmd = _tensors(lib), _tensors(cmd)
    assert sorted(t_lib) == sorted(t_cmd) and all(t_lib[k].equal(t_cmd[k]) for k in t_lib)
