import argparse
import importlib.metadata
import re
import subprocess
import sys

import pytest

import emomoe
from emomoe.cli import build_parser, main


def _verbs():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "verb")
    return sorted(action.choices)


def test_every_verb_has_help(capsys):
    verbs = _verbs()
    assert verbs, "no CLI verbs registered"
    for verb in verbs:
        with pytest.raises(SystemExit) as exc:
            main([verb, "--help"])
        assert exc.value.code == 0
        assert "usage: emomoe " + verb in capsys.readouterr().out


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "emomoe", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage: emomoe" in out.stdout


def test_unknown_verb_fails():
    with pytest.raises(SystemExit) as exc:
        main(["no-such-verb"])
    assert exc.value.code != 0


def _commands(parser):
    """Every (sub)command parser under `parser`, with its full name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield sub.prog, sub
                yield from _commands(sub)


def test_every_command_help_shows_a_runnable_example():
    for prog, sub in _commands(build_parser()):
        help_text = sub.format_help()
        examples = help_text[help_text.find("\nexample") :]
        assert re.search(r"\nexamples?( \(.*\))?:", help_text) and prog in examples, f"{prog} --help has no example"


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out == f"emomoe {emomoe.__version__}\n"
    assert emomoe.__version__ == importlib.metadata.version("emomoe")


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["no-such-verb"]])
def test_help_and_version_import_no_torch(argv):
    """Importing torch takes seconds; `emomoe --help` and `--version` took 4-7 s before they stopped
    importing every verb module."""
    code = (f"import sys\nfrom emomoe.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, file=sys.stderr)")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stderr
    assert err.splitlines()[-1] == "False", err


def test_the_light_parser_lists_every_verb_by_its_module_docstring():
    light = build_parser(only="")
    action = next(a for a in light._actions if a.dest == "verb")
    assert sorted(action.choices) == _verbs()
    help_text = light.format_help()
    assert "held-out loss and perplexity of a checkpoint, per domain." in help_text  # eval.py's docstring
    assert "`emomoe eval`" not in help_text and "`emomoe hf import`" not in help_text
