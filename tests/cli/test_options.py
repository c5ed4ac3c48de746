"""Options generated from config dataclasses (emomoe/cli/_options.py), and every verb that uses them."""

import argparse
import dataclasses
import enum

import pytest

from emomoe.analyze.analysis import AnalysisConfig
from emomoe.checkpoint.selection import AUTO_TOKENS, SelectionConfig
from emomoe.cli import build_parser, main
from emomoe.cli._options import add_config_options, config_from_args
from emomoe.config import Config, ranged
from emomoe.data.readers import ReadConfig
from emomoe.data.tokenize import TokenizeConfig
from emomoe.data.tokenizer import TokenizerTrainConfig
from emomoe.data.windows import BATCH_SIZE, NUM_EVAL_WINDOWS
from emomoe.deploy.config import GGUFExportConfig
from emomoe.deploy.quantize import QuantizeConfig
from emomoe.errors import ConfigError
from emomoe.evaluate.loss import EvalConfig
from emomoe.experiments.benchmarks import LmEvalConfig
from emomoe.experiments.finetune import FinetuneConfig
from emomoe.experiments.protocol import ProtocolConfig
from emomoe.experiments.sweep import SweepConfig
from emomoe.generate import GenerateConfig
from emomoe.hf.convert import ExportConfig, ImportConfig
from emomoe.select.merge import MergeConfig
from emomoe.select.subset import SelectConfig
from emomoe.train.config import TrainConfig
from emomoe.train.consolidate import ConsolidateConfig


class Shade(enum.StrEnum):
    LIGHT = "light"
    """Pale."""
    DARK = "dark"
    """Deep."""


@dataclasses.dataclass
class Inner(Config):
    num_rounds: int = 3
    """Rounds per go."""


@dataclasses.dataclass
class Toy(Config):
    rate: float = ranged(0.5, gt=0)
    """How fast, 10% of the way per step."""
    label: str | None = None
    """A name; None means none."""
    loud: bool = False
    """Shout."""
    shade: Shade = Shade.LIGHT
    """Which shade."""
    words: list[str] = dataclasses.field(default_factory=lambda: ["a", "b"])
    """Words to say."""
    inner: Inner = dataclasses.field(default_factory=Inner)


def _toy_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toy")
    add_config_options(parser, Toy)
    return parser


def _toy(*argv: str) -> Toy:
    return config_from_args(Toy, _toy_parser().parse_args(list(argv)))


def test_every_field_is_a_flag_named_after_it_with_its_docstring_and_default():
    text = " ".join(_toy_parser().format_help().split())
    assert "--rate X How fast, 10% of the way per step. (default: 0.5; > 0)" in text
    assert "--label LABEL A name; None means none." in text
    assert "--loud, --no-loud Shout. (default: off)" in text
    assert "--shade {light,dark} Which shade. (default: light)" in text
    assert "--words WORDS [WORDS ...] Words to say. (default: a b)" in text
    assert "--inner.num-rounds N Rounds per go. (default: 3)" in text


def test_no_flags_give_the_dataclass_defaults():
    assert _toy() == Toy()


def test_flags_are_parsed_by_the_field_type():
    toy = _toy("--rate", "2e-3", "--label", "#1", "--loud", "--shade", "dark", "--words", "x", "null",
               "--inner.num-rounds", "7")
    # Text stays as typed: "#1" is not a YAML comment, and "null" is a word.
    assert toy == Toy(rate=2e-3, label="#1", loud=True, shade=Shade.DARK, words=["x", "null"], inner=Inner(7))
    assert _toy("--loud", "--no-loud").loud is False


def test_a_file_then_the_flags_then_set(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text("rate: 4.0\nlabel: from-file\ninner: {num_rounds: 9}\n")
    toy = _toy("--config", str(path), "--rate", "3", "--set", "rate=2", "--set", "inner.num_rounds=1")
    assert (toy.rate, toy.label, toy.inner.num_rounds) == (2.0, "from-file", 1)


@pytest.mark.parametrize("argv, field", [
    (["--rate", "0"], "rate"),
    (["--inner.num-rounds", "many"], "inner.num_rounds"),
    (["--shade", "grey"], "shade"),
    (["--set", "inner.num_rounds=1.5"], "inner.num_rounds"),
])
def test_a_bad_value_names_the_field(argv, field):
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        _toy(*argv)


@pytest.mark.parametrize("source", ["flag", "set", "file"])
def test_a_value_out_of_its_declared_range_is_the_same_line_whichever_way_it_came(source, tmp_path):
    (tmp_path / "toy.yaml").write_text("rate: -2\n")
    argv = {"flag": ["--rate", "-2"], "set": ["--set", "rate=-2"], "file": ["--config", str(tmp_path / "toy.yaml")]}
    message = r"^rate: expected a number > 0, got -2\.0$"
    with pytest.raises(ConfigError, match=message if source != "file" else rf"^{tmp_path}/toy\.yaml: {message[1:]}"):
        _toy(*argv[source])


# Every verb with generated options: its config and the arguments it cannot run without.
VERBS = {
    "analyze": (AnalysisConfig, ["--checkpoints", "c", "--data", "d", "--out", "o"]),
    "checkpoint consolidate": (ConsolidateConfig, ["c", "--out", "o"]),
    "eval": (EvalConfig, ["--checkpoint", "c", "--data", "d"]),
    "export gguf": (GGUFExportConfig, ["--checkpoint", "c", "--out", "o"]),
    "finetune": (FinetuneConfig, ["--checkpoint", "c", "--data", "d", "--out", "o"]),
    "generate": (GenerateConfig, ["--checkpoint", "c", "--prompt", "p"]),
    "hf export": (ExportConfig, ["--checkpoint", "c", "--out", "o"]),
    "hf import": (ImportConfig, ["--hf", "h", "--out", "o"]),
    "lm-eval": (LmEvalConfig, ["--checkpoint", "c"]),
    "merge": (MergeConfig, ["--full", "f", "--subset", "s", "--out", "o"]),
    "protocol": (ProtocolConfig, ["--checkpoints", "c", "--out", "o"]),
    "quantize": (QuantizeConfig, ["--checkpoint", "c", "--out", "o"]),
    "select": (SelectConfig, ["--checkpoint", "c", "--out", "o"]),
    "sweep": (SweepConfig, ["--checkpoints", "c", "--data", "d", "--out", "o"]),
    "tokenize": (TokenizeConfig, ["--input", "i", "--tokenizer", "t", "--out", "o"]),
    "tokenizer train": (TokenizerTrainConfig, ["--input", "i", "--out", "o"]),
}
RUN_CONFIG_VERBS = {"train", "demo", "plan"}
"""They take --set for the whole run config (model, data, train), with no flag per field of it
(`plan` has flags for the fields of its own PlanConfig: tests/cli/test_plan_cli.py)."""
OPTIONLESS_VERBS = {"kernels build", "kernels info"}
"""They take no option at all, so they have no config (checked below: an option would need one)."""


def _commands(parser, prefix=""):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if not any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                    yield f"{prefix}{name}", sub
                yield from _commands(sub, f"{prefix}{name} ")


def _leaf_defaults(cls_or_section, prefix=""):
    """Dotted field path -> default, from `dataclasses.fields` (not from the generator)."""
    for f in dataclasses.fields(cls_or_section):
        if isinstance(cls_or_section, type):
            value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        else:
            value = getattr(cls_or_section, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaf_defaults(value, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, value


def _get(cfg, path):
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_every_verb_takes_set_and_the_table_above_covers_every_verb():
    commands = dict(_commands(build_parser()))
    takes_set = {name for name, sub in commands.items() if "--set" in sub._option_string_actions}
    assert takes_set == set(commands) - OPTIONLESS_VERBS
    assert set(commands) - RUN_CONFIG_VERBS - OPTIONLESS_VERBS == set(VERBS)
    for name in OPTIONLESS_VERBS:
        assert set(commands[name]._option_string_actions) == {"-h", "--help"}, name


@pytest.mark.parametrize("verb", VERBS)
def test_each_flag_defaults_to_its_dataclass_default(verb):
    cls, required = VERBS[verb]
    sub = dict(_commands(build_parser()))[verb]
    cfg = config_from_args(cls, sub.parse_args(required))
    help_text = sub.format_help()
    for path, default in _leaf_defaults(cls):
        assert _get(cfg, path) == default, path
        assert "--" + path.replace("_", "-") in help_text, path


@pytest.mark.parametrize("verb", VERBS)
def test_a_bad_set_key_is_one_line_naming_it_and_exit_2(verb, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written, but if it were, not into the repository
    assert main([*verb.split(), *VERBS[verb][1], "--set", "no_such_field=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"emomoe {verb.split()[0]}: error: unknown config key 'no_such_field' in override 'no_such_field=1'"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("verb", VERBS)
def test_set_reaches_every_field_and_a_bad_value_names_it(verb, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cls, required = VERBS[verb]
    sub = dict(_commands(build_parser()))[verb]
    paths = [path for path, _ in _leaf_defaults(cls)]
    for path, default in _leaf_defaults(cls):
        if isinstance(default, int) and not isinstance(default, bool):
            args = sub.parse_args([*required, "--set", f"{path}={default + 1}"])
            assert _get(config_from_args(cls, args), path) == default + 1, path
    # A mapping is no field's type: the error names the field, in one line.
    assert main([*verb.split(), *required, "--set", f"{paths[-1]}={{a: 1}}"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"emomoe {verb.split()[0]}: error: {paths[-1]}: ")
    assert list(tmp_path.iterdir()) == []


def test_one_default_per_concept_across_verbs():
    configs = [cls for cls, _ in VERBS.values()]
    batch_sizes = {cls.__name__: cls().batch_size for cls in configs if hasattr(cls(), "batch_size")}
    assert set(batch_sizes) >= {"AnalysisConfig", "EvalConfig", "FinetuneConfig", "GenerateConfig", "LmEvalConfig",
                                "SelectConfig", "SweepConfig"}
    assert set(batch_sizes.values()) == {BATCH_SIZE} == {TrainConfig().eval_batch_size}
    windows = {cls().num_eval_windows for cls in configs if hasattr(cls(), "num_eval_windows")}
    assert windows == {NUM_EVAL_WINDOWS} == {TrainConfig().num_eval_windows}
    assert {cls().seq_len for cls in configs if hasattr(cls(), "seq_len")} == {None}  # the model's max_seq_len
    assert all(issubclass(cls, ReadConfig) for cls in (TokenizeConfig, TokenizerTrainConfig))
    selecting = {cls.__name__ for cls in configs if issubclass(cls, SelectionConfig)}
    assert selecting == {"EvalConfig", "GenerateConfig", "LmEvalConfig"}
    assert {cls().auto_tokens for cls in configs if issubclass(cls, SelectionConfig)} == {AUTO_TOKENS}


def test_every_setting_has_a_help_text():
    for verb, sub in _commands(build_parser()):
        for group in sub._action_groups:
            if group.title == "settings":
                for action in group._group_actions:
                    assert action.help and not action.help.startswith(" ("), f"{verb} {action.option_strings}"
