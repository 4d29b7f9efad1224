"Dashboards, static export and steering against a tiny world with known answers (tests/dash_tiny.py)."
import math, re
from html.parser import HTMLParser
import numpy as np
import pytest
import torch
from sae_tutorial.dashboard import (merge_topk, logit_effects, final_norm_weight, feature_html, features_on_text,
                                    steering_hook, clamp_hook, feature_direction, generate, steer_generations,
                                    ablation_effect, store_scale, TokenText)
from sae_tutorial.feature_data import DashboardConfig, quantile_rows, gather_feature_data, export_dashboards
from dash_tiny import WORDS, CAT, HOOK, tiny_tokenizer, tiny_model, tiny_store, cat_sae, f_reference

torch.set_num_threads(2)

@pytest.fixture(scope="module")
def world():
    store, sae = tiny_store(), cat_sae()
    X = store.get(range(len(store)))
    return store, sae, X, f_reference(sae, X)

@pytest.fixture(scope="module")
def data(world):
    store, sae, _, _ = world
    return gather_feature_data(sae, store, model=tiny_model()[0], cfg=DashboardConfig(n_top=6, batch_size=37, left=3, right=2))

def test_merge_topk_matches_sort():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 9, generator=g).double()
    v, i = torch.full((7, 9), -math.inf, dtype=torch.float64), torch.full((7, 9), -1)
    for s in range(0, 500, 33):
        cv, ci = x[s:s + 33].topk(min(7, len(x[s:s + 33])), dim=0)
        v, i = merge_topk(v, i, cv, ci + s, 7)
    ref = np.sort(x.numpy(), axis=0)[::-1][:7]
    np.testing.assert_array_equal(v.numpy(), ref)
    np.testing.assert_array_equal(x.gather(0, i).numpy(), ref)

def test_known_feature_top_examples(world, data):
    store, sae, X, f = world
    toks = store.row_tokens(range(len(store)))
    # ground truth by construction: feature 0 fires on 'cat' and only there; feature 2 never
    assert set(toks[f[:, 0] > 0].tolist()) == {CAT}
    centre = data.top.tokens[0, :, data.cfg.left]
    assert (centre == CAT).all()
    # the pass equals a float64 brute force over the whole store
    np.testing.assert_allclose(data.density.numpy(), (f > 0).double().mean(0).numpy(), atol=1e-6)
    np.testing.assert_allclose(data.max_act.numpy(), f.max(0).values.numpy(), rtol=1e-4, atol=1e-5)
    ref = f[:, 0].topk(6)
    np.testing.assert_allclose(data.top.act[0].numpy(), ref.values.numpy(), rtol=1e-4, atol=1e-5)
    assert set(data.top.row[0].tolist()) == set(ref.indices.tolist())
    mean_ref = f[:, 0][f[:, 0] > 0].mean()
    assert float(data.mean_act[0]) == pytest.approx(float(mean_ref), rel=1e-4)
    # a feature that never fires has no examples, zero stats, and is NaN-free
    assert float(data.density[2]) == 0 and (data.top.row[2] == -1).all() and (data.quantiles.row[2] == -1).all()

def test_windows_are_the_contexts(world, data):
    store, sae, X, f = world
    L = data.cfg.left
    for j in range(data.top.row.shape[1]):
        c, p = int(data.top.ctx[0, j]), int(data.top.pos[0, j])
        r = int(data.top.row[0, j])
        assert tuple(store.rows[r].tolist()) == (c, p)
        for w in range(data.cfg.window):
            q = p - L + w
            if 0 <= q < store.tokens.shape[1]:
                assert int(data.top.tokens[0, j, w]) == int(store.tokens[c, q])
                a = float(data.top.acts[0, j, w])
                if q == 0: assert math.isnan(a)             # position 0 is a masked sink: no activation stored
                else:
                    row = int(((store.rows[:, 0] == c) & (store.rows[:, 1] == q)).nonzero()[0, 0])
                    assert a == pytest.approx(float(f[row, 0]), rel=1e-4, abs=1e-5)
            else: assert int(data.top.tokens[0, j, w]) == -1
        # source: even contexts come from 'pets'
        assert data.source_names[int(data.top.source[0, j])] == ("pets" if c % 2 == 0 else "misc")

def test_histogram_matches_numpy(world, data):
    _, _, _, f = world
    cfg = data.cfg
    for j in (0, 1, 5):
        v = f[:, j][f[:, j] > 0].numpy()
        lv = np.clip(np.log10(v), cfg.log10_min, cfg.log10_max - 1e-9)
        ref, _ = np.histogram(lv, bins=cfg.n_bins, range=(cfg.log10_min, cfg.log10_max))
        np.testing.assert_array_equal(data.hist_counts[j].numpy(), ref)
    np.testing.assert_allclose(data.hist_edges[[0, -1]].numpy(), [10 ** cfg.log10_min, 10 ** cfg.log10_max], rtol=1e-5)

def test_quantile_examples_are_ordered_firing_rows(world, data):
    _, _, _, f = world
    band = data.quantile_band()
    for j in range(len(data.features)):
        rows = data.quantiles.row[j]; ok = rows >= 0
        if not ok.any(): continue
        assert (f[rows[ok], j] > 0).all()
        acts = data.quantiles.act[j]
        for q in range(data.cfg.n_quantiles - 1):
            lo, hi = acts[(band == q) & ok], acts[(band == q + 1) & ok]
            if len(lo) and len(hi): assert lo.max() <= hi.min() + 1e-6
        assert len(set(rows[ok].tolist())) == int(ok.sum())   # no example twice

def test_quantile_rows_by_hand():
    rows = torch.tensor([[10, 11, 12, 13], [7, -1, -1, -1]])
    acts = torch.tensor([[4., 1, 3, 2], [5., 0, 0, 0]])
    # 2 bands x 1 example: ranks floor(0.25*4)=1, floor(0.75*4)=3 of the sorted sample [11, 13, 12, 10]
    assert quantile_rows(rows, acts, 2, 1).tolist() == [[13, 10], [7, -1]]

def test_subset_and_chunking_agree(world, data):
    store, sae, _, _ = world
    sub = gather_feature_data(sae, store, features=[5, 0], cfg=DashboardConfig(n_top=6, batch_size=4096, left=3, right=2))
    assert sub.features.tolist() == [5, 0]
    for i, j in ((1, 0), (0, 5)):                      # same rows (up to float ties), same values, same histograms
        assert set(sub.top.row[i].tolist()) == set(data.top.row[j].tolist())
        torch.testing.assert_close(sub.top.act[i], data.top.act[j])
        assert torch.equal(sub.hist_counts[i], data.hist_counts[j])
        assert float(sub.density[i]) == float(data.density[j])
    assert sub.logit_up is None                                # no model given

def test_bad_inputs(world, data):
    store, sae, _, _ = world
    from sae_tutorial.sae import SAEConfig, make_sae
    with pytest.raises(ValueError, match="d_in"):
        gather_feature_data(make_sae(SAEConfig(d_in=store.d_in + 1, expansion_factor=1.0)), store)
    with pytest.raises(ValueError, match="must lie in"):
        gather_feature_data(sae, store, features=[0, 10_000])
    with pytest.raises(ValueError, match="was not gathered"):
        data.index_of(10_000)
    with pytest.raises(ValueError, match="n_top"):
        DashboardConfig(n_top=0)

def test_logit_effects_float64():
    model, hf = tiny_model()
    g = torch.Generator().manual_seed(3)
    d = torch.randn(5, 32, generator=g)
    up, up_ids, down, down_ids = logit_effects(d, model, n=4)
    gamma = hf.model.norm.weight.detach().double()
    ref = (d.double() * gamma) @ hf.lm_head.weight.detach().double().T          # [5, vocab], from the HF weights
    assert torch.equal(final_norm_weight(model).double(), gamma)
    np.testing.assert_allclose(up.numpy(), np.sort(ref.numpy(), 1)[:, ::-1][:, :4], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(down.numpy(), np.sort(ref.numpy(), 1)[:, :4], rtol=1e-4, atol=1e-5)
    assert up_ids[:, 0].tolist() == ref.argmax(1).tolist() and down_ids[:, 0].tolist() == ref.argmin(1).tolist()

class _Tags(HTMLParser):
    def __init__(self):
        super().__init__(); self.tags, self.attrs = [], []
    def handle_starttag(self, tag, attrs): self.tags.append(tag); self.attrs += [k for k, _ in attrs]

def test_export_is_one_self_contained_file(world, tmp_path):
    store, sae, _, _ = world
    model, _ = tiny_model()
    path = export_dashboards(sae, store, model, tmp_path/"out"/"dash.html", features=[0, 1, 2])
    assert sorted(p.name for p in (tmp_path/"out").iterdir()) == ["dash.html"]
    page = path.read_text(encoding="utf-8")
    assert not re.search(r"https?://|src\s*=|@import|url\(|<script|<link|<img|<iframe", page, re.I)
    p = _Tags(); p.feed(page)
    assert {"script", "link", "img", "iframe", "object", "embed"}.isdisjoint(p.tags) and "src" not in p.attrs
    for f in (0, 1, 2):
        assert f'href="#f{f}"' in page and f'id="f{f}"' in page
    # feature 0's section shows the 'cat' tokens, highlighted, as its outlined centre tokens
    sec0 = page[page.index('id="f0"'):page.index('id="f1"')]
    assert len(re.findall(r'<span class="c" style="background:rgba\(255,140,0,[0-9.]+\)" title="[0-9.e+-]+">cat</span>', sec0)) >= 3
    assert "never fired" in page[page.index('id="f2"'):]

def test_export_counts_its_features_in_words(world, tmp_path):
    "The page's summary line says '1 feature' for one dashboard and '3 features' for three."
    store, sae, _, _ = world
    model, _ = tiny_model()
    one = export_dashboards(sae, store, model, tmp_path/"one.html", features=[0]).read_text(encoding="utf-8")
    three = export_dashboards(sae, store, model, tmp_path/"three.html", features=[0, 1, 2]).read_text(encoding="utf-8")
    assert ">1 feature · " in one and "1 features" not in one
    assert ">3 features · " in three

def test_feature_html_shading_is_proportional(data):
    tt = TokenText(tiny_tokenizer())
    h = feature_html(data, 0, tt=tt, with_css=False)
    alphas = [float(a) for a in re.findall(r'class="c" style="background:rgba\(255,140,0,([0-9.]+)\)"', h)]
    ref = (data.top.act[0] / data.max_act[0]).tolist()
    np.testing.assert_allclose(alphas[:len(ref)], ref, atol=0.006)   # rounded to 2 digits

def test_features_on_text_match_the_store(world):
    store, sae, X, f = world
    model, _ = tiny_model()
    c = 3
    text = " ".join(WORDS[t] for t in store.tokens[c, 1:].tolist())
    tf = features_on_text(model, sae, text, HOOK, store_scale(store), tiny_tokenizer(), outlier_factor=None)
    assert tf.tokens.tolist() == store.tokens[c].tolist() and not tf.kept[0] and tf.kept[1:].all()
    rows = (store.rows[:, 0] == c).nonzero().flatten()
    np.testing.assert_allclose(tf.f[1:].numpy(), f[rows].numpy(), rtol=1e-4, atol=1e-4)

def test_steering_raises_boosted_logits(world):
    """Steering along a feature raises the logits of its top boosted tokens: at the last block only the final norm and
    W_U follow, so with a large coefficient the steered model ranks exactly the feature's top boosted tokens first."""
    store, sae, _, _ = world
    model, _ = tiny_model()
    last = "blocks.1.hook_resid_post"
    toks = torch.tensor([[0, 1, 2, 3, 4, 5]])
    for j in (0, 1, 5):
        up, up_ids, down, down_ids = logit_effects(sae.W_dec.detach()[j:j + 1], model, n=3)
        logp = []
        with torch.no_grad():
            for c in (0.0, 1e4):
                fn = steering_hook(feature_direction(sae, j), c)
                logp.append(model.run_with_hooks(toks, fwd_hooks=[(last, fn)])[0, 1:].log_softmax(-1))
        assert (logp[1].argsort(-1, descending=True)[:, :3] == up_ids[0]).all()
        assert logp[1][:, up_ids[0, 0]].mean() > logp[0][:, up_ids[0, 0]].mean()      # the most boosted token gains on average
        assert (logp[1].argmin(-1) == down_ids[0, 0]).all()                          # and the most suppressed one last

def test_steering_hook_leaves_position_0_and_zero_is_identity(world):
    store, sae, _, _ = world
    model, _ = tiny_model()
    toks = torch.tensor([[0, 2, 3, 2]])
    seen = {}
    def rec(act, hook=None): seen["a"] = act.clone(); return act
    with torch.no_grad():
        model.run_with_hooks(toks, fwd_hooks=[(HOOK, rec)]); clean = seen["a"]
        model.run_with_hooks(toks, fwd_hooks=[(HOOK, steering_hook(feature_direction(sae, 0, 2.0), 3.0)), (HOOK, rec)])
    assert torch.equal(seen["a"][:, 0], clean[:, 0])
    torch.testing.assert_close(seen["a"][:, 1:] - clean[:, 1:], (1.5 * sae.W_dec[0]).expand(1, 3, -1).detach())
    with torch.no_grad():
        torch.testing.assert_close(model.run_with_hooks(toks, fwd_hooks=[(HOOK, steering_hook(sae.W_dec[0].detach(), 0.0))]), model(toks))

def test_clamp_sets_the_feature(world):
    "Clamping adds (v - f(x)) d / s, so ablation (v = 0) zeroes the feature exactly, and v > 0 moves x by the formula."
    store, sae, _, _ = world
    model, _ = tiny_model()
    s = store_scale(store)
    toks = torch.tensor([[0, 2, 3, 2, 6]])
    seen = {}
    def rec(act, hook=None): seen["x"] = act.clone(); return act
    with torch.no_grad():
        model.run_with_hooks(toks, fwd_hooks=[(HOOK, rec)]); x = seen["x"]
        f = sae.encode(x[0, 1:] * s)[:, 0]
        assert (f[[0, 2]] > 0).all() and (f[[1, 3]] == 0).all()                  # 'cat' at positions 1 and 3
        model.run_with_hooks(toks, fwd_hooks=[(HOOK, clamp_hook(sae, 0, 0.0, s)), (HOOK, rec)])
        torch.testing.assert_close(sae.encode(seen["x"][0, 1:] * s)[:, 0], torch.zeros(4), atol=1e-4, rtol=0)
        model.run_with_hooks(toks, fwd_hooks=[(HOOK, clamp_hook(sae, 0, 7.5, s)), (HOOK, rec)])
        ref = x[0, 1:].double() + (7.5 - f.double())[:, None] * sae.W_dec[0].double() / s
        torch.testing.assert_close(seen["x"][0, 1:].double(), ref, atol=1e-4, rtol=1e-5)
        assert torch.equal(seen["x"][0, 0], x[0, 0])                             # the sink is left alone
        torch.testing.assert_close(sae.encode(seen["x"][0, 1:] * s)[[0, 2], 0], torch.full((2,), 7.5))  # exact where it fired

def test_ablation_of_a_silent_feature_changes_nothing(world, data):
    store, sae, _, f = world
    model, _ = tiny_model()
    c, p = int(data.top.ctx[0, 0]), int(data.top.pos[0, 0])
    eff = ablation_effect(model, sae, 0, store.tokens[c, :p + 1], HOOK, store_scale(store))
    assert eff.f_clean == pytest.approx(float(data.top.act[0, 0]), rel=1e-4)   # fresh forward, same activation
    assert eff.kl > 0
    silent = ablation_effect(model, sae, 2, store.tokens[c, :p + 1], HOOK, store_scale(store))
    assert silent.kl == pytest.approx(0.0, abs=1e-9) and silent.f_clean == 0.0
    torch.testing.assert_close(silent.p_clean, silent.p_ablated)

def test_generate_matches_hf_greedy():
    "Greedy generation through the bridge and its hooks equals a greedy loop over the plain Hugging Face model."
    model, hf = tiny_model()
    tok = tiny_tokenizer()
    text = generate(model, "the cat sat", max_new_tokens=6, tokenizer=tok)
    ids = torch.tensor([[0, 1, 2, 3]])
    with torch.no_grad():
        for _ in range(6): ids = torch.cat([ids, hf(ids).logits[:, -1:].argmax(-1)], 1)
    assert text == tok.decode(ids[0, 4:].tolist())

def test_steer_generations_columns(world):
    store, sae, _, _ = world
    model, _ = tiny_model()
    gens = steer_generations(model, sae, 0, "the cat", HOOK, coeffs=(0.0, 30.0), max_new_tokens=4, tokenizer=tiny_tokenizer())
    assert [g.label for g in gens] == ["steer +0", "steer +30"]
    assert gens[0].text == generate(model, "the cat", 4, tokenizer=tiny_tokenizer())
    with pytest.raises(ValueError, match="hook point"):
        steer_generations(model, sae, 0, "the", "blocks.9.nope", tokenizer=tiny_tokenizer())

def test_token_text_window_rejoins_split_characters():
    "A byte-level BPE splits non-ASCII characters across tokens; window() puts each character back together."
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast
    text = "שלום עולם, مرحبا 🙂 plain ascii"
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["plain ascii text"] * 5, vocab_size=260, show_progress=False)   # too small to merge the rest
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    tt = TokenText(tok)
    assert tt.byte_level and len(ids) > len(text.split())
    parts = tt.window(ids)
    assert "".join(parts) == text and "�" not in "".join(parts)
    assert "�" in "".join(tt(i) for i in ids)                    # decoding one token at a time breaks characters
    assert TokenText(tiny_tokenizer()).window([1, 2, -1]) == ["the", "cat", ""]   # non-byte-level: token by token

def test_write_static_dashboard_for_a_run(world, tmp_path):
    "The entry point 07_reproduction calls: one file in the folder, the densest firing features, no model needed."
    store, sae, _, f = world
    from sae_tutorial.feature_data import write_static_dashboard
    path = write_static_dashboard(sae, store, tiny_tokenizer(), tmp_path/"dashboard", max_features=3)
    assert [p.name for p in (tmp_path/"dashboard").iterdir()] == ["dashboards.html"]
    page = path.read_text(encoding="utf-8")
    densest = (f > 0).double().mean(0).argsort(descending=True, stable=True)[:3].tolist()
    assert sorted(int(x) for x in re.findall(r'<div class="sd" id="f(\d+)"', page)) == sorted(densest)
    assert "(no model given)" in page and not re.search(r"https?://|src\s*=", page)

def test_histogram_svg_keeps_every_count():
    from sae_tutorial.dashboard import histogram_svg
    g = torch.Generator().manual_seed(4)
    counts = torch.zeros(192, dtype=torch.int64); counts[20:150] = torch.randint(0, 9, (130,), generator=g)
    edges = torch.logspace(-4, 2, 193)
    svg = histogram_svg(counts, edges, max_bars=48)
    bars = [int(v) for v in re.findall(r"</?title>[^<]*: (\d+)</title>", svg)]
    assert sum(bars) == int(counts.sum()) and len(re.findall("<rect", svg)) <= 48
    assert histogram_svg(torch.zeros(5, dtype=torch.int64), edges[:6]) == '<div class="na">never fires</div>'

def test_dashboard_cli_from_saved_sae_and_disk_store(world, tmp_path):
    "The command-line path: options parsed by the CLI helpers, a saved SAE, a disk store, a saved tokenizer."
    import argparse
    from sae_tutorial.activations import Contexts, harvest_activations, HarvestConfig
    from sae_tutorial.cli import add_dataclass_args, dataclass_from_args
    from sae_tutorial.feature_data import DashboardRunConfig, dashboard_cli
    store, sae, _, _ = world
    model, _ = tiny_model()
    disk = harvest_activations(model, Contexts(store.tokens, store.doc_index, store.doc_sources),
                               HarvestConfig(hook=HOOK, store="disk", path=str(tmp_path/"store"), progress=False,
                                             outlier_factor=None))
    assert torch.equal(disk.get(range(len(disk))), store.get(range(len(store))))
    sae.save(tmp_path/"sae"); tiny_tokenizer().save_pretrained(tmp_path/"tok")
    p = argparse.ArgumentParser()
    add_dataclass_args(p, DashboardRunConfig, "c0_"); add_dataclass_args(p, DashboardConfig, "c1_")
    ns = p.parse_args(["--sae", str(tmp_path/"sae"), "--store", str(tmp_path/"store"), "--out", str(tmp_path/"d.html"),
                       "--model", "", "--tokenizer", str(tmp_path/"tok"), "--features", "0,1", "--n-top", "4"])
    path = dashboard_cli(dataclass_from_args(DashboardRunConfig, ns, "c0_"), dataclass_from_args(DashboardConfig, ns, "c1_"))
    page = path.read_text(encoding="utf-8")
    assert sorted(re.findall(r'<div class="sd" id="f(\d+)"', page)) == ["0", "1"]
    sec0 = page[page.index('id="f0"'):page.index('id="f1"')]
    assert len(re.findall(r'class="c"[^>]*>cat</span>', sec0.split("Top activations")[1].split("Quantile")[0])) == 4
    with pytest.raises(ValueError, match="tokenizer"):
        dashboard_cli(DashboardRunConfig(sae=str(tmp_path/"sae"), store=str(tmp_path/"store"), model=""))
    for bad, says in (("abc", "--features 'abc': give comma-separated feature indices"), ("0,99999", "features are 0..")):
        with pytest.raises(ValueError, match=re.escape(says)):
            dashboard_cli(DashboardRunConfig(sae=str(tmp_path/"sae"), store=str(tmp_path/"store"), model="",
                                             tokenizer=str(tmp_path/"tok"), features=bad))
