"""The config tree: YAML + CLI overrides, strict keys, value checks, presets, diffs."""

import pytest

from rspo.config import Config, ConfigError, diff_configs, load_config, parse_overrides


def test_defaults_validate_and_roundtrip_yaml(tmp_path):
    cfg = Config().validate()
    p = tmp_path / "c.yaml"
    p.write_text(cfg.to_yaml())
    assert load_config(p).to_dict() == cfg.to_dict()


def test_overrides_are_typed_by_yaml():
    ov = parse_overrides(
        ["--objective.coef", "0.25", "--run.seed=3", "--objective.regularizer", "reverse_kl"]
    )
    assert ov == {"objective": {"coef": 0.25, "regularizer": "reverse_kl"}, "run": {"seed": 3}}
    cfg = load_config(None, ["--objective.coef", "0.25", "--objective.regularizer", "reverse_kl"])
    assert cfg.objective.coef == 0.25 and cfg.objective.regularizer == "reverse_kl"


def test_yaml_then_cli_override_precedence(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("run:\n  seed: 5\n  iterations: 2\n")
    cfg = load_config(p, ["--run.seed", "7"])
    assert (cfg.run.seed, cfg.run.iterations) == (7, 2)


@pytest.mark.parametrize(
    "override, needle",
    [
        (["--objective.cof", "1"], "unknown config key objective.cof"),
        (["--nosection.x", "1"], "unknown config key nosection"),
        (["--generation.num_samples", "1"], "generation.num_samples"),
        (["--objective.coef", "-1"], "objective.coef: must be >= 0"),
        (["--objective.coef", ".nan"], "objective.coef: value is NaN"),
        (["--training.optimizer", "sgd"], "allowed: adamw, rmsprop"),
        (["--run.seed", "abc"], "run.seed: expected an integer"),
        (["--training.micro_batch_size", "7"], "multiple of training.micro_batch_size"),
        (["--objective.regularizer", "", "--objective.coef", "0.1"], "coef > 0 needs a reg"),
        (["--objective.preset", "nope"], "unknown preset 'nope'"),
        (["--evaluation.num_samples", "3"], "evaluation.num_samples=3 at evaluation.temperature 0"),
        (["--evaluation.diversity_samples", "1"], "evaluation.diversity_samples: 1 sample"),
    ],
)
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=None) as e:
        load_config(None, override)
    assert needle in str(e.value)


def test_bad_yaml_file_is_named(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("run: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_preset_fills_objective_but_explicit_wins():
    cfg = load_config(None, ["--objective.preset", "sppo"])
    assert cfg.objective.coef == 0 and cfg.objective.regularizer == ""
    cfg = load_config(None, ["--objective.preset", "rspo_reverse", "--objective.coef", "0.7"])
    assert cfg.objective.coef == 0.7 and "reverse_kl" in cfg.objective.regularizer


def test_diff_configs_lists_dotted_keys():
    a, b = Config().to_dict(), Config().to_dict()
    b["objective"]["coef"] = 1.0
    b["run"]["seed"] = 9
    assert diff_configs(a, b) == ["objective.coef", "run.seed"]


def test_inpo_preset_derives_tau_from_eta():
    from rspo.objectives import PRESETS

    cfg = load_config(None, ["--objective.preset", "inpo", "--objective.eta", "4"])
    assert cfg.objective.loss_type == "inpo"
    assert cfg.objective.tau == pytest.approx(PRESETS["inpo"].tau_eta / 4)


@pytest.mark.parametrize("preset", [[], ["--objective.preset", "inpo"]])
def test_eta_zero_is_a_named_config_error(preset):
    """η = 0 divides by zero in the loss (and in the INPO preset's τ = ητ/η): refused here."""
    with pytest.raises(ConfigError, match=r"objective\.eta: must be > 0, got 0\.0"):
        load_config(None, [*preset, "--objective.eta", "0"])


def test_deep_merge_merges_sections_but_replaces_settings_dicts():
    from rspo.config import deep_merge

    base = {"judge": {"name": "a", "kwargs": {"x": 1, "y": 2}}, "run": {"seed": 1, "iterations": 2}}
    over = {"judge": {"kwargs": {"x": 5}}, "run": {"seed": 3}}
    assert deep_merge(base, over) == {
        "judge": {"name": "a", "kwargs": {"x": 5}},
        "run": {"seed": 3, "iterations": 2},
    }
    assert base["run"]["seed"] == 1  # inputs untouched


def test_exponent_without_dot_is_a_number():
    """YAML 1.1 reads 5e-4 as a string; float fields still take it (and reject real strings)."""
    cfg = load_config(None, ["--training.lr", "5e-4", "--objective.eta", "1E2"])
    assert cfg.training.lr == 5e-4 and cfg.objective.eta == 100.0
    with pytest.raises(ConfigError, match="training.lr: expected a number, got 'fast'"):
        load_config(None, ["--training.lr", "fast"])


def test_unquoted_on_off_in_yaml_or_cli_mean_the_strings(tmp_path):
    # YAML 1.1 reads bare on/off as booleans; for the auto|on|off switches they mean the words
    path = tmp_path / "c.yaml"
    path.write_text("training: {packing: off}\ngeneration: {logprobs: on}\n")
    cfg = load_config(path)
    assert (cfg.training.packing, cfg.generation.logprobs) == ("off", "on")
    cfg = load_config(None, ["--training.packing", "on", "--generation.logprobs", "off"])
    assert (cfg.training.packing, cfg.generation.logprobs) == ("on", "off")
    with pytest.raises(ConfigError, match="generation.backend: expected a string, got True"):
        load_config(None, ["--generation.backend", "true"])  # no on/off choice: still an error


def test_an_entry_of_a_settings_dict_overrides_only_that_entry(tmp_path):
    """--judge.kwargs.model X changes one judge setting and keeps the file's others; a whole
    dict given as --judge.kwargs '{...}' replaces them (settings of another judge must not
    leak into it)."""
    f = tmp_path / "c.yaml"
    f.write_text(
        "judge: {name: python, kwargs: {fn: 'a:b', batch: 4}}\n"
        "evaluation: {judge: python, judge_kwargs: {fn: 'a:b'}}\n"
    )
    one = load_config(f, ["--judge.kwargs.fn", "c:d"])
    assert one.judge.kwargs == {"fn": "c:d", "batch": 4}
    assert type(one.judge.kwargs) is dict  # dumps as plain YAML
    assert "fn: c:d" in one.to_yaml()
    whole = load_config(f, ["--judge.kwargs", "{fn: 'c:d'}"])
    assert whole.judge.kwargs == {"fn": "c:d"}
    new = load_config(f, ["--evaluation.judge_kwargs.extra", "1"])
    assert new.evaluation.judge_kwargs == {"fn": "a:b", "extra": 1}


def test_errors_say_whether_the_file_or_the_command_line_holds_the_bad_key(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("training: {lr: 0.1}\n")
    bad.write_text("training: {lrr: 0.1}\n")
    with pytest.raises(
        ConfigError, match=r"^command-line override: unknown config key training.lrr"
    ):
        load_config(good, ["--training.lrr", "3"])
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key training.lrr"):
        load_config(bad, ["--training.lr", "0.2"])  # a valid override that prefixes the key


def test_a_dangling_override_is_named_even_with_output(capsys):
    from rspo.cli import main

    assert main(["train", "--output", "/tmp/rspo-never", "--training.lr"]) == 2
    assert "override --training.lr needs a value" in capsys.readouterr().err
