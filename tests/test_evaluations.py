"""The evaluation step of nbs/07b_evaluations.ipynb on a ci reproduction: files, keys (a second call only reads,
a changed setting recomputes without retraining), the SAE it trains, bad run folders and the CLI."""
import json
import pytest

from sae_tutorial.cli import main
from sae_tutorial.evaluations import EvalsConfig, evaluations_table, first_letter_labels, run_evaluations
from sae_tutorial.reproduce import ReproConfig, reproduce
from sae_tutorial.sae import SAE

pytestmark = pytest.mark.usefixtures("torch_one_thread")
SMALL = dict(archs="relu,topk,batchtopk,matryoshka", probe_rows=2000, letter_rows=2000, min_letter_rows=1)


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
    assert list(res["rows"]) == ["relu", "topk", "batchtopk", "matryoshka"]
    assert any("training batchtopk" in m for m in log) and any("training matryoshka" in m for m in log)
    mt = SAE.load(out/"saes"/"matryoshka")
    assert mt.cfg.architecture == "matryoshka" and mt.cfg.prefixes[-1] == mt.cfg.d_sae
    for arch in ("batchtopk", "matryoshka"):                    # trained here: better than their own untrained start
        r = res["rows"][arch]
        assert r["explained_variance"] > r["untrained"]["explained_variance"], arch
    cfg = json.loads((run/"config.json").read_text())
    # ReLU is trained here too, its λ steered to the run's k (the run's own ReLU SAE sits at whatever L0 its λ gave)
    assert any("training relu" in m for m in log)
    rj = json.loads((out/"saes"/"relu"/"train.json").read_text())
    assert rj["target_l0"] == cfg["topk"]["k"] and rj["l1_coeff_start"] == cfg["relu"]["l1_coeff"]
    assert rj["l1_coeff_end"] != rj["l1_coeff_start"] and SAE.load(out/"saes"/"relu").cfg.architecture == "relu"
    assert 0.9 * cfg["topk"]["k"] <= res["rows"]["topk"]["l0_train"] <= cfg["topk"]["k"]   # TopK: k on any row (fewer
                                                                                            # only where a top value is <= 0)
    bt = SAE.load(out/"saes"/"batchtopk")
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
    assert sum(line.startswith("| ") for line in md.splitlines()) == 1 + 4


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


@pytest.mark.parametrize("bad, match", [(dict(archs="relu,gated"), "choose one or more"), (dict(archs=""), "choose one or more"),
                                        (dict(ks=""), "positive whole numbers"), (dict(ks="0,1"), "positive whole numbers"),
                                        (dict(ks="a"), "positive whole numbers"), (dict(tau=0.0), "cosine threshold"),
                                        (dict(probe_rows=0), "at least 1")])
def test_bad_settings_are_refused_with_the_fix(bad, match):
    with pytest.raises(ValueError, match=match): EvalsConfig(run_dir="x", **bad)


def test_each_trained_architecture_has_its_own_seed_whatever_the_order():
    from sae_tutorial.evaluations import extra_sae_seed
    cfg = ReproConfig(preset="ci")
    seeds = {a: extra_sae_seed(a, cfg) for a in ("relu", "batchtopk", "matryoshka")}
    assert len(set(seeds.values())) == 3 and all(s != cfg.seed for s in seeds.values())
    assert EvalsConfig(run_dir="x", archs="matryoshka,topk").arch_list == ["matryoshka", "topk"]


def test_a_folder_that_is_no_run_is_refused(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="finished reproduction"):
        run_evaluations(EvalsConfig(run_dir=str(tmp_path)))
    assert main(["evaluations", "--run-dir", str(tmp_path/"nope")]) == 1
    assert "finished reproduction" in capsys.readouterr().err
    assert main(["evaluations"]) == 1                      # no --run-dir


def test_first_letters_are_whole_ascii_words_only():
    assert first_letter_labels([" Apple", " apple", "apple", " a", " 3d", " Über", " zz"]).tolist() == [0, 0, -1, -1, -1, -1, 25]
