import subprocess
import sys

import pytest

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
