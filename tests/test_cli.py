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


def test_interrupted_command_prints_one_line_and_how_to_resume(tmp_path):
    "SIGINT in the middle of a reproduction: exit 130 and one line saying what was kept and to run it again, no traceback."
    import signal, subprocess, sys, time
    from pathlib import Path
    exe = str(Path(sys.executable).parent/"sae-tutorial")       # the console script, as a user runs it
    # A terminal delivers Ctrl-C to a program whose SIGINT is not ignored; a job started with `&` by a
    # non-interactive shell (how CI may be launched) inherits SIGINT ignored, so give the child the default.
    p = subprocess.Popen([exe, "reproduce", "--preset", "ci", "--run-dir", str(tmp_path/"r"), "--progress", "false"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (tmp_path/"r"/"config.json").exists() and time.time() < deadline: time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, (out, err)
    assert "Traceback" not in err and "interrupted" in err and "Run the same command again to resume" in err


def test_reproduce_help_shows_nested_options_with_help():
    "Every ReproConfig option, nested ones included, is listed with its help text, choices and default."
    r = _run("reproduce", "--help")
    out = " ".join(r.stdout.split())
    assert r.returncode == 0
    assert "--topk.lr" in out and "peak Adam learning rate (preset)" in out and "--relu.warmup-steps" in out
    assert "max(1, steps // 20)" in out and "ci|cpu|gpu" in out and "data|train|evaluate" in out
    assert "--topk-lr" in out and "--l1-coeff" in out           # the flat names of earlier versions still work


def test_nested_option_round_trips_into_the_config():
    from sae_tutorial.reproduce import ReproConfig, ReluSettings, TopKSettings
    p = argparse.ArgumentParser(); add_dataclass_args(p, ReproConfig)
    got = dataclass_from_args(ReproConfig, p.parse_args(["--topk.k", "7", "--relu.min-lr-frac", "0.2", "--lr", "0.5",
                                                         "--steps", "9", "--stop-after", "train"]))
    assert got == ReproConfig(steps=9, stop_after="train", relu=ReluSettings(lr=0.5, min_lr_frac=0.2),
                              topk=TopKSettings(k=7))
    assert dataclass_from_args(ReproConfig, p.parse_args([])) == ReproConfig()


def test_unknown_choice_names_the_field_and_choices(capsys):
    assert main(["reproduce", "--stop-after", "later"]) == 1
    assert "stop_after='later' is unknown; use one of data, train, evaluate" in capsys.readouterr().err
