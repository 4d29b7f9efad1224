"The `sae-tutorial` console script, run as a user would run it."
import subprocess, sys
from dataclasses import dataclass
import argparse, pytest
from sae_tutorial.cli import add_dataclass_args, dataclass_from_args, main

def _run(*args):
    return subprocess.run([sys.executable, "-c", "import sys; from sae_tutorial.cli import main; sys.exit(main())", *args],
                          capture_output=True, text=True, timeout=120)

def test_help_lists_commands():
    r = _run("--help")
    assert r.returncode == 0 and "toy" in r.stdout

def test_unknown_command_fails():
    r = _run("no-such-command")
    assert r.returncode == 2 and "invalid choice" in r.stderr

@dataclass
class Cfg:
    n: int = 3
    ratio: float = 0.5
    on: bool = True

def test_bool_and_numbers_parse():
    p = argparse.ArgumentParser(); add_dataclass_args(p, Cfg)
    assert dataclass_from_args(Cfg, p.parse_args(["--n", "7", "--on", "no", "--ratio", "2e-3"])) == Cfg(7, 2e-3, False)
    with pytest.raises(SystemExit): p.parse_args(["--on", "maybe"])
