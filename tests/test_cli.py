"""The command line: the demo runs and prints its table; bad options are refused."""

import subprocess
import sys

import pytest

from picard.cli import main


def test_demo_prints_the_comparison(capsys):
    assert main(["demo", "--steps", "60", "--window", "16", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    for name in ("neural ODE", "Van der Pol", "neural SDE", "sweeps", "speedup"):
        assert name in out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--steps", "--window", "--repeats"])
def test_demo_refuses_nonpositive_numbers(flag, capsys):
    with pytest.raises(SystemExit):
        main(["demo", flag, "0"])
    assert flag in capsys.readouterr().err


def test_python_dash_m_picard_help():
    out = subprocess.run(
        [sys.executable, "-m", "picard", "demo", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--window" in out
