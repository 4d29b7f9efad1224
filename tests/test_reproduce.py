"""End-to-end reproduction at the ci preset (offline): files, metrics fields, resume after training, CLI."""
import json
import numpy as np
import pytest
import torch

from sae_tutorial.reproduce import (ReproConfig, reproduce, METRIC_FIELDS, PRESETS, run_stage, stage_done, stage_key,
                                    split_documents_by_index, load_store, sae_specs)
from sae_tutorial.analysis import (category_features, splitting_families, one_to_one_cosines, agreement,
                                   random_dictionary, splitting_null, children_histogram, category_labels,
                                   category_verdict, plot_splitting, plot_categories)

SAES = ("relu", "relu_seed1", "topk", "topk_seed1", "topk_x1")


@pytest.fixture(scope="module")
def interrupted_then_resumed(tmp_path_factory):
    "A ci run stopped after training, then the same command again: (run_dir, first result, second result, mtimes)."
    run = tmp_path_factory.mktemp("repro")/"run"
    cfg = ReproConfig(preset="ci", run_dir=str(run), progress=False)
    first = reproduce(ReproConfig(preset="ci", run_dir=str(run), progress=False, stop_after="train"))
    mtimes = {p: p.stat().st_mtime_ns for p in run.glob("saes/*/sae.safetensors")}
    second = reproduce(cfg)
    return run, first, second, mtimes


def test_stops_after_training_without_evaluating(interrupted_then_resumed):
    run, first, _, mtimes = interrupted_then_resumed
    assert first.metrics == {} and first.analysis is None
    assert len(mtimes) == len(SAES)
    assert all(v == "ran" for k, v in first.stages.items() if k.startswith("train/"))


def test_resume_evaluates_without_retraining(interrupted_then_resumed):
    run, _, second, mtimes = interrupted_then_resumed
    assert second.stages["data_train"] == second.stages["data_eval"] == "skipped"
    assert all(second.stages[f"train/{p.parent.name}"] == "skipped" for p in mtimes)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes   # weights untouched
    assert all(second.stages[f"eval/{p.parent.name}"] == "ran" for p in mtimes)
    assert second.stages["analysis"] == "ran"


def test_run_folder_has_every_promised_file(interrupted_then_resumed):
    run = interrupted_then_resumed[0]
    for name in SAES:
        for f in ("sae.safetensors", "cfg.json", "train.json", "decoder_snapshots.safetensors", "saelens/cfg.json",
                  "saelens/sae_weights.safetensors"):
            assert (run/"saes"/name/f).is_file(), (name, f)
        for f in ("metrics.json", "density.npy"): assert (run/"eval"/name/f).is_file(), (name, f)
    for name in ("relu", "topk"):
        assert (run/"saes"/name/"init"/"sae.safetensors").is_file() and (run/"eval"/f"{name}_untrained"/"metrics.json").is_file()
    for f in ("config.json", "metrics.json", "results.md", "analysis/analysis.json", "data_train/info.json", "data_eval/info.json",
              "data_source/info.json", "data_train/tokenizer/tokenizer.json",
              "plots/repro_log_density.png", "plots/repro_training_curve.png", "plots/repro_universality.png",
              "plots/repro_feature_categories.png", "dashboard/dashboards.html"):
        assert (run/f).is_file(), f
    assert not list(run.glob(".*")), "temporary stage folders were left behind"
    assert not list(run.glob("checkpoints/*")), "mid-training checkpoints outlived their published SAE"


def test_metrics_json_has_every_field(interrupted_then_resumed):
    run = interrupted_then_resumed[0]
    metrics = json.loads((run/"metrics.json").read_text())
    assert set(metrics) == set(SAES) | {"relu_untrained", "topk_untrained"}
    for name, m in metrics.items():
        assert [k for k in METRIC_FIELDS if k not in m] == [], name
        assert m["fvu"] == pytest.approx(1 - m["explained_variance"])
        assert sum(m["log10_density_hist"]["counts"]) + m["log10_density_hist"]["dead"] == m["d_sae"]
    for name in ("relu", "topk", "relu_untrained", "topk_untrained"):   # the language-model metrics are measured
        for m in (metrics[name], metrics[name]["held_out_source"]):       # on held-out docs and the held-out source
            assert all(isinstance(m[k], float) for k in ("ce_clean", "ce_sae", "ce_zero_abl", "ce_loss_recovered", "kl_sae"))
            assert m["ce_loss_recovered"] == pytest.approx((m["ce_zero_abl"] - m["ce_sae"]) / (m["ce_zero_abl"] - m["ce_clean"]))
            assert m["ce_loss_recovered_mean_abl"] == pytest.approx((m["ce_mean_abl"] - m["ce_sae"]) / (m["ce_mean_abl"] - m["ce_clean"]))
            assert m["delta_ce"] == pytest.approx(m["ce_sae"] - m["ce_clean"]) and m["kl_sae"] >= 0
        assert metrics[name]["held_out_source"]["source"] == "sotu"
    assert metrics["topk_untrained"]["tokens_trained"] == 0 and metrics["topk"]["tokens_trained"] > 0
    assert 0 < metrics["topk"]["l0"] <= PRESETS["ci"]["topk"]["k"]              # TopK: at most k active latents per token


def test_explained_variance_matches_float64_numpy(interrupted_then_resumed):
    "The saved TopK SAE, loaded, takes raw activations: its held-out EV in numpy float64 equals metrics.json's."
    from sae_tutorial.sae import SAE
    run = interrupted_then_resumed[0]
    ev_store = load_store(run/"data_eval"/"store", normalize=False)
    sae = SAE.load(run/"saes"/"topk")
    assert sae.cfg.input_scale == pytest.approx(load_store(run/"data_train"/"store").scale)
    x = ev_store.get(np.arange(ev_store.n_rows)).double().numpy()
    with torch.no_grad(): x_hat = sae(torch.from_numpy(x).float()).x_hat.double().numpy()
    ev = 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert json.loads((run/"metrics.json").read_text())["topk"]["explained_variance"] == pytest.approx(ev, abs=1e-4)


_STANDALONE = r"""
import json, sys
import numpy as np
from safetensors.numpy import load_file
sae_dir, store_dir = sys.argv[1], sys.argv[2]
meta = json.load(open(store_dir + "/meta.json"))
x = np.fromfile(store_dir + "/acts.bin", dtype=np.float32).reshape(meta["n_rows"], meta["d_in"]).astype(np.float64)
if sys.argv[3] == "ours":                 # cfg.json + sae.safetensors: scale by input_scale, TopK with cfg k
    cfg = json.load(open(sae_dir + "/cfg.json")); w = load_file(sae_dir + "/sae.safetensors"); s = cfg["input_scale"]
    assert cfg["hook"] == meta["hook"] and cfg["d_in"] == x.shape[1] and cfg["dtype"] == "float32"
else:                                     # SAELens layout: the scale is folded into the weights
    cfg = json.load(open(sae_dir + "/cfg.json")); w = load_file(sae_dir + "/sae_weights.safetensors"); s = 1.0
    assert cfg["metadata"]["hook_name"] == meta["hook"]
w = {k: v.astype(np.float64) for k, v in w.items()}
pre = (s * x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
kth = np.sort(pre, axis=1)[:, [-cfg["k"]]]
f = np.where(pre >= kth, np.maximum(pre, 0), 0.0)
x_hat = (f @ w["W_dec"] + w["b_dec"]) / s
print(1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
"""

@pytest.mark.parametrize("layout", ["ours", "saelens"])
def test_saved_sae_works_without_this_package(interrupted_then_resumed, tmp_path, layout):
    "A run's TopK SAE applied to raw activations with only json + numpy + safetensors (no sae_tutorial import) gives the run's EV."
    import subprocess, sys
    run = interrupted_then_resumed[0]
    script = tmp_path/"apply.py"; script.write_text(_STANDALONE)
    sae_dir = run/"saes"/"topk" if layout == "ours" else run/"saes"/"topk"/"saelens"
    out = subprocess.run([sys.executable, "-I", str(script), str(sae_dir), str(run/"data_eval"/"store"), layout],
                         capture_output=True, text=True, cwd=tmp_path, check=True)
    assert "sae_tutorial" not in out.stderr
    ev = float(out.stdout.strip())
    assert json.loads((run/"metrics.json").read_text())["topk"]["explained_variance"] == pytest.approx(ev, abs=1e-4)


def test_every_sae_of_a_run_has_its_own_seed():
    specs = sae_specs(ReproConfig(preset="cpu", seeds=3).resolved())
    assert len({s.seed for s in specs}) == len(specs) and {s.name for s in specs} >= {"relu_seed2", "topk_seed2"}


def test_one_to_one_matching_by_hand():
    "Two rows of A that both point at B's row 0: many-to-one counts both, the Hungarian pairing only one."
    C = np.array([[0.95, 0.10], [0.90, 0.20]])
    assert sorted(one_to_one_cosines(C).tolist()) == [0.2, 0.95]
    e = torch.eye(3, dtype=torch.float64)
    A = torch.stack([e[0], e[0] + 0.01 * e[1], e[2]]); B = e
    a = agreement(A, B)
    assert a["mmcs"] == pytest.approx((1 + 1 / np.sqrt(1.0001) + 1) / 3) and a["share_0.9"] == pytest.approx(2 / 3)
    assert agreement(B, B)["share_0.9"] == 1.0


def test_random_dictionaries_share_nothing():
    "The null: two random 512 x 64 dictionaries match no latent at cos > 0.7 and form no splitting family."
    a = agreement(random_dictionary(512, 64, 0), random_dictionary(512, 64, 1))
    assert a["share_0.7"] == 0 and 0.2 < a["mmcs"] < 0.6
    assert splitting_null(128, 512, 64)["n_families"] == 0


def test_held_out_documents_are_disjoint(interrupted_then_resumed):
    docs = [f"d{i}" for i in range(25)]
    tr, ho = split_documents_by_index(docs, every=10)
    assert ho == ["d9", "d19"] and set(tr) | set(ho) == set(docs) and not set(tr) & set(ho)
    run = interrupted_then_resumed[0]
    info = {s: json.loads((run/f"data_{s}"/"info.json").read_text()) for s in ("train", "eval", "source")}
    assert "sotu" not in info["train"]["sources"] and "sotu" not in info["eval"]["sources"]   # held out entirely
    assert set(info["source"]["sources"]) == {"sotu"}


def test_cli_resumes_and_prints_table(interrupted_then_resumed, capsys):
    from sae_tutorial.cli import main
    run = interrupted_then_resumed[0]
    assert main(["reproduce", "--preset", "ci", "--run-dir", str(run), "--progress", "false"]) == 0
    out = capsys.readouterr().out
    assert "| SAE |" in out and "| topk |" in out and "skipped" in out


def test_cli_failure_is_clear_and_nonzero(tmp_path, capsys):
    from sae_tutorial.cli import main
    assert main(["reproduce", "--preset", "laptop", "--run-dir", str(tmp_path/"r")]) == 1
    err = capsys.readouterr().err
    assert "preset='laptop' is unknown" in err and "ci, cpu, gpu" in err


def test_failed_stage_leaves_nothing_and_rerun_skips(tmp_path):
    def boom(tmp): (tmp/"half.txt").write_text("x"); raise RuntimeError("disk full")
    with pytest.raises(RuntimeError): run_stage(tmp_path/"s", "k1", boom, log=lambda m: None)
    assert list(tmp_path.iterdir()) == []                   # no partial folder, no temporary left
    calls = []
    run_stage(tmp_path/"s", "k1", lambda t: calls.append(1), log=lambda m: None)
    run_stage(tmp_path/"s", "k1", lambda t: calls.append(1), log=lambda m: None)
    assert calls == [1] and stage_done(tmp_path/"s", "k1")
    run_stage(tmp_path/"s", "k2", lambda t: calls.append(2), log=lambda m: None)   # changed config: recomputed
    assert calls == [1, 2] and stage_done(tmp_path/"s", "k2") and not stage_done(tmp_path/"s", "k1")
    assert stage_key(a=1, b=[2]) == stage_key(b=[2], a=1) != stage_key(a=1, b=[3])


def test_category_features_by_hand():
    "Feature 0 fires only and always on category tokens, feature 2 on half of them, feature 1 everywhere."
    f = torch.tensor([[2., 1., 1.], [2., 1., 0.], [0., 2., 0.], [0., 2., 0.]])
    lab = {"cat": torch.tensor([True, True, False, False])}
    d = category_features(f, lab, top=3, min_fires=1)["cat"]
    assert [x["feature"] for x in d["features"]] == [0, 2, 1]
    assert d["features"][0]["precision"] == pytest.approx(1.0) and d["features"][0]["recall"] == pytest.approx(1.0)
    assert d["features"][1]["precision"] == pytest.approx(1.0) and d["features"][1]["recall"] == pytest.approx(0.5)
    assert d["features"][2]["precision"] == pytest.approx(1 / 3) and d["base_rate"] == pytest.approx(0.5)


def test_splitting_families_by_hand():
    "Two large features near small feature 0, one near small feature 1: only feature 0 forms a family."
    e = torch.eye(4)
    W_small = e[:2]
    W_large = torch.stack([e[0] + 0.5 * e[2], e[0] - 0.5 * e[2], e[1], e[3]])
    W_large = W_large / W_large.norm(dim=1, keepdim=True)
    fams = splitting_families(W_small, W_large, torch.ones(2), torch.ones(4))
    assert len(fams) == 1 and fams[0]["parent"] == 0 and sorted(fams[0]["children"]) == [0, 1]
    assert fams[0]["cos"][0] == pytest.approx(1 / np.sqrt(1.25), abs=1e-3)


def test_children_histogram_agrees_with_the_families():
    "The histogram's k >= 2 part is the families' sizes, and it counts every live small feature once."
    g = torch.Generator().manual_seed(0)
    W_small = torch.nn.functional.normalize(torch.randn(40, 16, generator=g), dim=1)
    W_large = torch.nn.functional.normalize(W_small.repeat(3, 1) + 0.6 * torch.randn(120, 16, generator=g), dim=1)
    dens_s, dens_l = torch.ones(40), (torch.arange(120) % 7 != 0).float()     # some dead large features
    dens_s[3] = 0
    hist = children_histogram(W_small, W_large, dens_s, dens_l)
    fams = splitting_families(W_small, W_large, dens_s, dens_l)
    assert sum(hist) == 39 and sum(hist[2:]) == len(fams) > 0
    assert [k for k, n in enumerate(hist) for _ in range(n) if k >= 2] == sorted(len(f["children"]) for f in fams)
    null = splitting_null(40, 160, 576)["children_hist"]          # random directions in 576 dims: no child at all
    assert null == [40, 0]


class _TextStore:
    "The few ActivationStore attributes category_labels reads: rows (context, position), tokens, sources."
    def __init__(self, contexts, sources):
        self.tokens = torch.tensor(contexts)
        self.rows = torch.tensor([(c, p) for c in range(len(contexts)) for p in range(1, len(contexts[c]))])
        self.n_rows, self._src = len(self.rows), sources
    def row_tokens(self, idx): r = self.rows[torch.as_tensor(idx)]; return self.tokens[r[:, 0], r[:, 1]]
    def row_sources(self, idx): return [self._src[int(c)] for c in self.rows[torch.as_tensor(idx)][:, 0]]


def test_category_labels_read_lines_and_whole_words():
    "A certificate's hex header is not base64, its base64 line is; a place split into three tokens counts whole."
    vocab = ["<eot>", "# SHA1", ":", "8d", "\n", "MIIB", "IjAN", "Bgkq", "hkiG", " Ing", "later", "ra", " is", " 42",
             " Paris", " pad"]
    ctx = [[0, 1, 2, 3, 4, 5, 6, 7, 8], [0, 9, 10, 11, 12, 13, 14, 15, 15]]
    lab = category_labels(_TextStore(ctx, ["base64", "wiki_en"]), vocab)
    rows = [(c, p) for c in range(2) for p in range(1, 9)]
    got = {k: [rows[i] for i in torch.nonzero(v).flatten().tolist()] for k, v in lab.items()}
    assert got["base64"] == [(0, 5), (0, 6), (0, 7), (0, 8)]
    assert got["certificate headers"] == [(0, 1), (0, 2), (0, 3), (0, 4)]
    assert got["places"] == [(1, 1), (1, 2), (1, 3), (1, 6)]
    assert got["numbers and dates"] == [(1, 5)]          # '8d' is in the certificate, so not a number


def test_category_verdict_says_why():
    found = {"n_tokens": 500, "base_rate": 0.06, "features": [{"feature": 1, "precision": 0.9, "recall": 0.8}]}
    assert category_verdict(found) == "found"
    assert "too few" in category_verdict({**found, "n_tokens": 17})
    assert "precision" in category_verdict({**found, "features": [{"feature": 1, "precision": 0.3, "recall": 0.8}]})
    assert "recall" in category_verdict({**found, "features": [{"feature": 1, "precision": 0.9, "recall": 0.1}]})
    assert category_verdict({"n_tokens": 0, "base_rate": 0.0, "features": []}).startswith("not found")


def test_analysis_figures_show_the_counts():
    "The splitting bars are the histograms (integers, null beside); the categories figure has one row each."
    import matplotlib; matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s = {"small": "a", "large": "b", "d_sae": {"a": 4, "b": 8}, "n_small_alive": 4, "n_families": 1,
         "children_per_parent": [2], "children_hist": [1, 2, 1], "null": {"n_families": 0, "children_hist": [4]}}
    fig = plot_splitting({}, {}, {"splitting": s})
    heights = sorted(p.get_height() for p in fig.axes[0].patches)
    assert heights == sorted([1, 2, 1, 4, 0, 0]) and all(float(t).is_integer() for t in fig.axes[0].get_yticks())
    cats = {"sae": "topk", "places": {"n_tokens": 5, "base_rate": 0.001, "features": [{"feature": 3, "precision": 1.0, "recall": 0.2}]},
            "python code": {"n_tokens": 50, "base_rate": 0.1, "features": [{"feature": 7, "precision": 0.9, "recall": 0.8}]}}
    fig2 = plot_categories({}, {}, {"categories": cats})
    assert "1 of 2 categories" in fig2.axes[0].get_title(loc="left")
    plt.close("all")


def test_bad_hook_fails_before_any_data_is_built(tmp_path):
    "A misspelt hook stops the run at once, naming the closest hooks, with no corpus, store or stage folder written."
    run = tmp_path/"r"
    with pytest.raises(ValueError, match="not a hook point.*blocks.15.hook_resid_post"):
        reproduce(ReproConfig(preset="ci", run_dir=str(run), hook="blocks.15.hook_resid_pst", progress=False))
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]


def test_unknown_held_out_source_names_the_choices():
    with pytest.raises(ValueError, match="held_out_source='klingon' is not a corpus source.*sotu.*or ''"):
        ReproConfig(preset="ci", held_out_source="klingon").resolved()
    assert ReproConfig(preset="ci", held_out_source="").resolved().held_out_source == ""


def test_raw_unit_sae_refuses_a_normalising_store(interrupted_then_resumed):
    "A saved SAE scales raw activations itself: handing it normalised batches would scale twice, and is refused."
    from sae_tutorial.sae import SAE
    from sae_tutorial.reproduce import require_sae_fits_store
    run = interrupted_then_resumed[0]
    with pytest.raises(ValueError, match="normalize=False"):
        require_sae_fits_store(SAE.load(run/"saes"/"topk"), load_store(run/"data_eval"/"store"))
    require_sae_fits_store(SAE.load(run/"saes"/"topk"), load_store(run/"data_eval"/"store", normalize=False))


@pytest.mark.parametrize("name", ["../../x", "/tmp/elsewhere", "a/b", "..", "C:x"])
def test_run_name_must_be_a_name(name):
    with pytest.raises(ValueError, match="is a path, not a run name.*--run-dir"):
        ReproConfig(preset="ci", name=name).resolved()


def test_received_run_folder_with_links_is_refused_and_nothing_outside_changes(tmp_path):
    "results.md and plots/ replaced by links to places outside the run: the run refuses before writing anything."
    run, outside = tmp_path/"run", tmp_path/"outside"
    run.mkdir(); outside.mkdir(); (outside/"victim.txt").write_text("keep me")
    (run/"results.md").symlink_to(outside/"victim.txt"); (run/"plots").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="holds symbolic links.*results.md ->.*never writes through links"):
        reproduce(ReproConfig(preset="ci", run_dir=str(run), progress=False))
    assert (outside/"victim.txt").read_text() == "keep me" and sorted(p.name for p in outside.iterdir()) == ["victim.txt"]
    assert not (run/"config.json").exists()
