"""The evaluation step of nbs/07b_evaluations.ipynb on a ci reproduction: files, keys (a second call only reads,
a changed setting recomputes without retraining), the SAE it trains, bad run folders and the CLI."""
import json
import pytest

from sae_tutorial.cli import main
from sae_tutorial.evaluations import EvalsConfig, evaluations_table, first_letter_labels, run_evaluations
from sae_tutorial.reproduce import ReproConfig, reproduce
from sae_tutorial.sae import SAE

pytestmark = pytest.mark.usefixtures("torch_one_thread")
SMALL = dict(archs="relu,topk,batchtopk", probe_rows=2000, letter_rows=2000, min_letter_rows=1)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    "A ci reproduction and its evaluations: (run_dir, result, log lines)."
    run = tmp_path_factory.mktemp("evals")/"run"
    reproduce(ReproConfig(preset="ci", run_dir=str(run), progress=False), log=lambda m: None)
    log = []
    return run, run_evaluations(EvalsConfig(run_dir=str(run), **SMALL), log=log.append), log


def test_files_rows_and_the_trained_architecture(evaluated):
    run, res, log = evaluated
    out = run/"evaluations"
    assert {p.name for p in out.iterdir()} >= {"evaluations.json", "evaluations.md", "evaluations.png", "saes", "eval"}
    assert list(res["rows"]) == ["relu", "topk", "batchtopk"]
    assert any("training batchtopk" in m for m in log)
    bt = SAE.load(out/"saes"/"batchtopk")
    cfg = json.loads((run/"config.json").read_text())
    assert bt.cfg.architecture == "batchtopk" and bt.cfg.k == cfg["topk"]["k"]
    assert bt.cfg.tokens_trained == cfg["steps"] * cfg["batch_size"]          # the same token budget as the run's SAEs
    assert (out/"saes"/"batchtopk"/"init"/"sae.safetensors").is_file()
    # the run's own SAEs are reused, with the run's own metrics
    assert res["rows"]["topk"]["explained_variance"] == json.loads((run/"eval"/"topk"/"metrics.json").read_text())["explained_variance"]
    for r in res["rows"].values():
        for v in list(r["probe"].values()) + list(r["untrained"]["probe"].values()):
            assert 0.0 <= v <= 1.0
    assert 0.5 <= res["dense_probe"] <= 1.0
    md = evaluations_table(res)
    assert md == (out/"evaluations.md").read_text().rstrip("\n")
    assert sum(line.startswith("| ") for line in md.splitlines()) == 1 + 3


def test_second_call_reads_and_a_changed_setting_recomputes_without_retraining(evaluated):
    run, res, _ = evaluated
    log = []
    again = run_evaluations(EvalsConfig(run_dir=str(run), **SMALL), log=log.append)
    assert again["key"] == res["key"] and any("skipped" in m for m in log)
    weights = run/"evaluations"/"saes"/"batchtopk"/"sae.safetensors"
    before = weights.stat().st_mtime_ns
    log = []
    other = run_evaluations(EvalsConfig(run_dir=str(run), **{**SMALL, "ks": "1,2"}), log=log.append)
    assert other["key"] != res["key"] and other["ks"] == [1, 2]
    assert not any("training" in m for m in log) and weights.stat().st_mtime_ns == before


def test_a_folder_that_is_no_run_is_refused(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="finished reproduction"):
        run_evaluations(EvalsConfig(run_dir=str(tmp_path)))
    assert main(["evaluations", "--run-dir", str(tmp_path/"nope")]) == 1
    assert "finished reproduction" in capsys.readouterr().err
    assert main(["evaluations"]) == 1                      # no --run-dir


def test_first_letters_are_whole_ascii_words_only():
    assert first_letter_labels([" Apple", " apple", "apple", " a", " 3d", " Über", " zz"]).tolist() == [0, 0, -1, -1, -1, -1, 25]
