"Metrics of nbs/05_metrics.ipynb against float64 numpy references, invariants and bad inputs."
import numpy as np, torch, pytest
from sae_tutorial.metrics import match_dictionaries, mmcs

rng = np.random.default_rng(0)

def np_max_cos(A, B):
    A = A / np.linalg.norm(A, axis=1, keepdims=True); B = B / np.linalg.norm(B, axis=1, keepdims=True)
    return (A @ B.T).max(axis=1)

# ---------------------------------------------------------------- dictionary matching
def test_mmcs_matches_numpy():
    A, B = rng.normal(size=(40, 16)), rng.normal(size=(70, 16))
    ref = np_max_cos(A, B)
    m = match_dictionaries(torch.tensor(A, dtype=torch.float32), torch.tensor(B), threshold=0.3)
    np.testing.assert_allclose(m.max_cos.numpy(), ref, rtol=1e-6)
    assert mmcs(torch.tensor(A), torch.tensor(B)) == pytest.approx(ref.mean(), rel=1e-12)
    assert m.frac_matched == pytest.approx((ref > 0.3).mean())

def test_best_index_matches_numpy_argmax():
    A, B = rng.normal(size=(30, 8)), rng.normal(size=(50, 8))
    An, Bn = A / np.linalg.norm(A, axis=1, keepdims=True), B / np.linalg.norm(B, axis=1, keepdims=True)
    np.testing.assert_array_equal(match_dictionaries(torch.tensor(A), torch.tensor(B)).best.numpy(), (An @ Bn.T).argmax(1))

def test_chunking_does_not_change_the_answer():
    A, B = torch.randn(101, 12, dtype=torch.float64), torch.randn(33, 12, dtype=torch.float64)
    a, b = match_dictionaries(A, B, chunk=7), match_dictionaries(A, B)
    torch.testing.assert_close(a.max_cos, b.max_cos); torch.testing.assert_close(a.best, b.best)

def test_identical_and_permuted_and_rescaled_decoders_give_one():
    D = torch.randn(64, 20)
    assert mmcs(D, D) == pytest.approx(1.0, abs=1e-12)
    perm = torch.randperm(64)
    scaled = D[perm] * torch.rand(64, 1).add(0.1)   # positive rescaling does not change direction
    m = match_dictionaries(D, scaled)
    assert m.mmcs == pytest.approx(1.0, abs=1e-12) and m.frac_matched == 1.0
    torch.testing.assert_close(perm[m.best], torch.arange(64))

def test_extra_learned_rows_only_help_and_mmcs_is_asymmetric():
    D_true, extra = torch.eye(4), torch.randn(10, 4)
    assert mmcs(D_true, torch.cat([extra, D_true])) == pytest.approx(1.0)
    assert mmcs(torch.cat([extra, D_true]), D_true) < 1.0

def test_orthogonal_dictionaries_give_zero_and_flipped_sign_is_not_a_match():
    assert mmcs(torch.eye(6)[:3], torch.eye(6)[3:]) == pytest.approx(0.0)
    assert mmcs(torch.eye(3), -torch.eye(3)) == pytest.approx(0.0)

def test_wrong_shapes_name_the_fix():
    with pytest.raises(ValueError, match="pass W.T"): mmcs(torch.randn(5, 3), torch.randn(5, 4))
    with pytest.raises(ValueError, match="2-D"): mmcs(torch.randn(5), torch.randn(5, 4))
    with pytest.raises(ValueError, match="all-zero rows"): mmcs(torch.zeros(2, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match="NaN"): mmcs(torch.full((2, 3), float("nan")), torch.randn(4, 3))

# ---------------------------------------------------------------- reconstruction
from sae_tutorial.metrics import (mse, explained_variance, fvu, cosine_sim, relative_reconstruction_bias,
                                  ReconstructionStats, l0, l1, feature_density, dead_fraction, utilization,
                                  SparsityStats, evaluate)

def np_recon(x, xh):
    "float64 numpy references, written independently of the library."
    x, xh = np.asarray(x, np.float64), np.asarray(xh, np.float64)
    sse = ((x - xh)**2).sum()
    var = ((x - x.mean(axis=0))**2).sum()          # two-pass, around the dataset mean
    nx, nh = np.linalg.norm(x, axis=1), np.linalg.norm(xh, axis=1)
    cos = np.empty(len(x))
    for i in range(len(x)):
        if nx[i] == 0 and nh[i] == 0: cos[i] = 1.0
        elif nx[i] == 0 or nh[i] == 0: cos[i] = 0.0
        else: cos[i] = x[i] @ xh[i] / (nx[i] * nh[i])
    a = (xh * x).sum() / (xh**2).sum()             # least-squares scale of x_hat towards x
    return dict(mse=sse / x.size, ev=1 - sse / var, cos=cos.mean(), gamma=1 / a)

def rand_pair(n=300, d=10, offset=0.0, seed=0):
    r = np.random.default_rng(seed)
    x = r.normal(size=(n, d)) * r.uniform(0.5, 2, size=d) + offset
    xh = 0.7 * x + 0.3 * r.normal(size=(n, d))
    x[:3] = 0; xh[1] = 0; xh[2, 0] = 1.0           # rows 0,1 are zero->zero; row 2 zero->nonzero
    return x, xh

def test_reconstruction_metrics_match_numpy():
    x, xh = rand_pair()
    ref = np_recon(x, xh)
    X, XH = torch.tensor(x, dtype=torch.float32), torch.tensor(xh, dtype=torch.float32)
    assert mse(X, XH) == pytest.approx(ref["mse"], rel=1e-5)
    assert explained_variance(X, XH) == pytest.approx(ref["ev"], rel=1e-5)
    assert fvu(X, XH) == pytest.approx(1 - ref["ev"], rel=1e-5)
    assert cosine_sim(X, XH) == pytest.approx(ref["cos"], rel=1e-5)
    assert relative_reconstruction_bias(X, XH) == pytest.approx(ref["gamma"], rel=1e-5)

def test_explained_variance_invariants():
    x = torch.randn(200, 6, dtype=torch.float64) * 3 + 50
    assert explained_variance(x, x) == 1.0 and fvu(x, x) == 0.0
    assert explained_variance(x, x.mean(0).expand_as(x)) == pytest.approx(0.0, abs=1e-10)
    assert explained_variance(x, torch.zeros_like(x)) < -100     # far worse than the mean: not clipped at 0

def test_explained_variance_is_not_zero_centred():
    "The zero-centred variant would give ~0.99 here; the dataset-mean one gives 0 for a constant."
    x = torch.randn(1000, 4, dtype=torch.float64) + 30
    xh = x.mean(0).expand_as(x)
    assert 1 - ((x - xh)**2).sum() / (x**2).sum() > 0.99
    assert abs(explained_variance(x, xh)) < 1e-10

def test_relative_bias_hand_values():
    x = torch.randn(5000, 8, dtype=torch.float64)
    assert relative_reconstruction_bias(x, 0.6 * x) == pytest.approx(0.6)
    proj = x.clone(); proj[:, 4:] = 0                            # unbiased lossy projection
    assert relative_reconstruction_bias(x, proj) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not positive"): relative_reconstruction_bias(x, torch.zeros_like(x))

@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_reconstruction_streaming_equals_all_at_once(offset):
    x, xh = rand_pair(n=1000, d=7, offset=offset, seed=3)
    ref = np_recon(x, xh)
    X, XH = torch.tensor(x), torch.tensor(xh)
    s = ReconstructionStats()
    cuts = [0, 1, 2, 50, 333, 334, 900, 1000]                   # uneven batches, incl. size-1 and empty
    for a, b in zip(cuts[:-1], cuts[1:]): s.update(X[a:b], XH[a:b])
    s.update(X[:0], XH[:0])
    r = s.compute()
    assert r.n == 1000
    assert r.mse == pytest.approx(ref["mse"], rel=1e-10)
    assert r.explained_variance == pytest.approx(ref["ev"], rel=1e-9)   # Chan merge stays exact even at offset 1e4
    assert r.fvu == pytest.approx(1 - ref["ev"], rel=1e-9)
    assert r.cosine_sim == pytest.approx(ref["cos"], rel=1e-10)
    assert r.rel_bias == pytest.approx(ref["gamma"], rel=1e-10)

def test_zero_variance_and_empty_raise_clearly():
    with pytest.raises(ValueError, match="zero variance"): explained_variance(torch.full((5, 3), 2.0), torch.zeros(5, 3))
    s = ReconstructionStats().update(torch.full((5, 3), 2.0), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="zero variance"): s.compute()
    with pytest.raises(ValueError, match="no rows seen"): ReconstructionStats().compute()
    with pytest.raises(ValueError, match="no rows seen"): SparsityStats().compute()

def test_shape_mismatches_and_nans_raise_clearly():
    with pytest.raises(ValueError, match=r"same shape; got \(4, 3\) and \(4, 2\)"): mse(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="Flatten"): explained_variance(torch.zeros(2, 4, 3), torch.zeros(2, 4, 3))
    s = ReconstructionStats().update(torch.randn(4, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match="d_in=5 but earlier batches had d_in=3"): s.update(torch.randn(4, 5), torch.randn(4, 5))
    with pytest.raises(ValueError, match="NaN"): mse(torch.tensor([[float("nan")]]), torch.zeros(1, 1))
    with pytest.raises(ValueError, match=r"\[batch, d_sae\]"): l0(torch.zeros(7))
    sp = SparsityStats().update(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="d_sae=5 but earlier batches had d_sae=4"): sp.update(torch.zeros(3, 5))

# ---------------------------------------------------------------- sparsity
def sparse_f(n=500, d_sae=40, seed=1):
    r = np.random.default_rng(seed)
    f = r.exponential(size=(n, d_sae)) * (r.random((n, d_sae)) < r.uniform(0, 0.2, size=d_sae))
    f[:, :3] = 0                                                 # three dead latents
    return f

def test_sparsity_metrics_match_numpy():
    f = sparse_f(); F = torch.tensor(f, dtype=torch.float32)
    active = f != 0
    assert l0(F) == pytest.approx(active.sum(1).mean())
    assert l1(F) == pytest.approx(np.abs(f).sum(1).mean(), rel=1e-6)
    dens = active.mean(0)
    np.testing.assert_allclose(feature_density(F).numpy(), dens)
    assert dead_fraction(feature_density(F)) == pytest.approx((dens == 0).mean())
    assert dead_fraction(feature_density(F)) == pytest.approx(3 / 40)
    assert utilization(feature_density(F), 0.05) == pytest.approx((dens > 0.05).mean())

def test_sparsity_streaming_equals_all_at_once():
    f = sparse_f(n=997); F = torch.tensor(f)
    s = SparsityStats(theta=0.01)
    for chunk in F.split(100): s.update(chunk)
    r = s.compute()
    assert r.n == 997 and r.theta == 0.01
    assert r.l0 == pytest.approx(l0(F), rel=1e-12) and r.l1 == pytest.approx(l1(F), rel=1e-12)
    torch.testing.assert_close(r.density, feature_density(F))
    assert r.dead_fraction == dead_fraction(feature_density(F))
    assert r.utilization == utilization(feature_density(F), 0.01)

def test_dead_fraction_over_a_window_follows_binomial():
    "A latent with density p looks dead in a window of N rows with probability (1-p)^N."
    g = torch.Generator().manual_seed(0)
    p, N = 2e-3, 500
    f = (torch.rand(N, 4000, generator=g) < p).float()
    assert dead_fraction(feature_density(f)) == pytest.approx((1 - p)**N, abs=0.03)

# ---------------------------------------------------------------- evaluate
class ToySAE(torch.nn.Module):
    "ReLU SAE with given weights, independent of sae_tutorial.sae."
    def __init__(self, W_dec, b_enc=-0.1):
        super().__init__()
        self.W_dec = torch.nn.Parameter(W_dec.clone()); self.b_enc = b_enc
    def forward(self, x):
        from collections import namedtuple
        f = torch.relu(x @ self.W_dec.T + self.b_enc)
        return namedtuple("Out", "x_hat f")(f @ self.W_dec, f)

def test_evaluate_matches_the_formulas_and_serialises():
    import json
    g = torch.Generator().manual_seed(0)
    D = torch.nn.functional.normalize(torch.randn(24, 12, generator=g), dim=1)
    x = torch.rand(2000, 24, generator=g).mul(torch.rand(2000, 24, generator=g) < 0.1) @ D
    sae = ToySAE(D).train()
    res = evaluate(sae, x.split(300), D_true=D[torch.randperm(24, generator=g)], match_threshold=0.95)
    assert sae.training                                        # mode restored
    out = sae(x); ref = np_recon(x.numpy(), out.x_hat.detach().numpy())
    assert res.n_tokens == 2000 and res.d_sae == 24
    assert res.explained_variance == pytest.approx(ref["ev"], rel=1e-5)
    assert res.rel_bias == pytest.approx(ref["gamma"], rel=1e-5)
    assert res.l0 == pytest.approx(float((out.f != 0).sum(1).double().mean()))
    assert res.mmcs == pytest.approx(1.0) and res.frac_matched == 1.0        # permuted true dictionary
    d = res.to_dict()
    json.dumps(d)                                              # plain types only
    assert d["n_dead"] == int((res.density == 0).sum()) and "density" not in d
    table = str(res)
    assert "explained_variance" in table and "mmcs" in table and len(table.splitlines()) == len([v for v in d.values() if v is not None and not isinstance(v, dict)])

def test_evaluate_max_batches_and_bad_calls():
    x = torch.randn(100, 6)
    sae = ToySAE(torch.eye(6))
    assert evaluate(sae, x.split(10), max_batches=3).n_tokens == 30
    with pytest.raises(ValueError, match="pass `batches`"): evaluate(sae)
    with pytest.raises(ValueError, match="needs `model` and `hook_name`"): evaluate(sae, token_batches=[torch.zeros(1, 2, dtype=torch.long)])
    with pytest.raises(TypeError, match="SAEOutput-like"): evaluate(lambda x: (x, x), x.split(10))

def test_evaluate_accepts_a_bare_tensor_reconstruction():
    x = torch.randn(64, 5)
    res = evaluate(lambda x: 0.5 * x, [x])
    assert res.rel_bias == pytest.approx(0.5) and res.l0 is None and res.density is None

# ---------------------------------------------------------------- language-model splice
from sae_tutorial.metrics import make_tiny_hooked_lm, splice_metrics, splice_hook, ce_loss_recovered

HOOK = "blocks.0.hook_resid_pre"

def tokens(seed=0, b=4, t=9):
    "Sequences following next = (3*tok + 1) mod 11 with probability 0.9 (a rule the fixture model learns)."
    g = torch.Generator().manual_seed(seed)
    out = torch.randint(0, 11, (b, t), generator=g)
    for i in range(1, t):
        follow = torch.rand(b, generator=g) < 0.9
        out[:, i] = torch.where(follow, (3 * out[:, i - 1] + 1) % 11, out[:, i])
    return out

@pytest.fixture(scope="module")
def lm():
    "A tiny LM trained for a moment, so that ablating its embedding really costs loss."
    n_threads = torch.get_num_threads(); torch.set_num_threads(1)   # tiny tensors: one thread is fastest
    m = make_tiny_hooked_lm(d_vocab=11, d_model=8, d_mlp=16, seed=1)
    opt = torch.optim.Adam(m.parameters(), lr=2e-2)
    for step in range(150):
        loss = m(tokens(100 + step, b=32), return_type="loss"); opt.zero_grad(); loss.backward(); opt.step()
    yield m.eval()
    torch.set_num_threads(n_threads)

def np_ce_kl(logits_clean, logits_spliced, toks, keep):
    "Reference: per-prediction CE and KL in float64 numpy over predictions made at kept positions."
    def logsm(z): z = z - z.max(-1, keepdims=True); return z - np.log(np.exp(z).sum(-1, keepdims=True))
    lc, ls = logsm(logits_clean[:, :-1].astype(np.float64)), logsm(logits_spliced[:, :-1].astype(np.float64))
    tgt = toks[:, 1:]; k = keep[:, :-1]
    ce_c = -np.take_along_axis(lc, tgt[..., None], -1)[..., 0][k]
    ce_s = -np.take_along_axis(ls, tgt[..., None], -1)[..., 0][k]
    kl = (np.exp(lc) * (lc - ls)).sum(-1)[k]
    return ce_c.mean(), ce_s.mean(), kl.mean()

def test_ce_clean_equals_the_models_own_loss(lm):
    t = tokens()
    m = splice_metrics(lm, [t], HOOK, lambda x: x)
    with torch.no_grad(): ref = float(lm(t, return_type="loss"))
    assert m.ce_clean == pytest.approx(ref, rel=1e-5) and m.n_pred == 4 * 8

def test_identity_splice_recovers_one_and_zero_splice_recovers_zero(lm):
    batches = [tokens(s) for s in range(3)]
    m = splice_metrics(lm, batches, HOOK, lambda x: x)
    assert m.ce_sae == m.ce_clean and m.ce_recovered_zero == 1.0 and m.ce_recovered_mean == 1.0 and m.kl_sae == 0.0
    z = splice_metrics(lm, batches, HOOK, torch.zeros_like)
    assert z.ce_sae == z.ce_zero_abl and z.ce_recovered_zero == 0.0 and z.kl_sae == pytest.approx(z.kl_zero_abl)
    assert z.ce_zero_abl > z.ce_clean + 0.1                    # the ablation matters in this model

def test_mean_splice_recovers_zero_of_the_mean_ablation_gap(lm):
    t, keep = tokens(5), torch.ones(4, 9, dtype=torch.bool); keep[:, 0] = False
    m = splice_metrics(lm, [(t, keep)], HOOK, lambda x: x.mean(0).expand_as(x))   # batch mean over kept rows
    assert m.ce_sae == pytest.approx(m.ce_mean_abl, rel=1e-6) and m.ce_recovered_mean == pytest.approx(0.0, abs=1e-5)

def test_masked_ce_and_kl_match_numpy_and_masked_positions_untouched(lm):
    t = tokens(7)
    keep = torch.rand(4, 9, generator=torch.Generator().manual_seed(3)) > 0.4
    keep[:, 0] = False
    noise = lambda x: x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    m = splice_metrics(lm, [(t, keep)], HOOK, noise)
    # independent reference: record the activation, build the spliced one by hand, run with a plain hook
    acts = []
    with torch.no_grad():
        clean = lm.run_with_hooks(t, fwd_hooks=[(HOOK, lambda a, hook: acts.append(a.clone()))])
        new = acts[0].clone(); new[keep] = noise(acts[0][keep])
        spliced = lm.run_with_hooks(t, fwd_hooks=[(HOOK, lambda a, hook: new)])
        seen = []
        lm.run_with_hooks(t, fwd_hooks=[(HOOK, splice_hook(new, keep)), ("blocks.0.hook_mlp_out", lambda a, hook: None),
                                        (HOOK, lambda a, hook: seen.append(a.clone()))])
    torch.testing.assert_close(seen[0][~keep], acts[0][~keep], rtol=0, atol=0)   # masked positions keep their value
    ce_c, ce_s, kl = np_ce_kl(clean.numpy(), spliced.numpy(), t.numpy(), keep.numpy())
    assert m.n_pred == int(keep[:, :-1].sum())
    assert m.ce_clean == pytest.approx(ce_c, rel=1e-5) and m.ce_sae == pytest.approx(ce_s, rel=1e-5)
    assert m.kl_sae == pytest.approx(kl, rel=1e-4)

def test_lm_streaming_equals_one_big_batch(lm):
    t = tokens(11, b=6)
    f = lambda x: 0.8 * x
    one = splice_metrics(lm, [t], HOOK, f, mean_act=torch.ones(8))
    many = splice_metrics(lm, [t[:1], t[1:4], t[4:]], HOOK, f, mean_act=torch.ones(8))
    for a, b in zip(one, many): assert a == pytest.approx(b, rel=1e-6)

def test_act_scale_round_trip(lm):
    "The SAE sees act*scale and its output is divided by scale; an SAE that checks the scale recovers everything."
    t = tokens(2); seen = []
    def sae(x): seen.append(x); return x
    m1 = splice_metrics(lm, [t], HOOK, sae, act_scale=4.0)
    with torch.no_grad():
        act = []; lm.run_with_hooks(t, fwd_hooks=[(HOOK, lambda a, hook: act.append(a))])
    torch.testing.assert_close(seen[0], 4.0 * act[0].reshape(-1, 8))
    assert m1.ce_recovered_zero == pytest.approx(1.0)
    r = evaluate(lambda x: 0.5 * x, model=lm, hook_name=HOOK, token_batches=[t], act_scale=4.0)
    assert r.mse == pytest.approx(float(((4 * act[0] * 0.5)**2).mean()), rel=1e-5)   # metrics in SAE units

def test_ce_loss_recovered_formula():
    assert ce_loss_recovered(1.0, 1.5, 3.0) == pytest.approx(0.75)
    assert ce_loss_recovered(1.0, 4.0, 3.0) == pytest.approx(-0.5)          # worse than ablating
    assert np.isnan(ce_loss_recovered(1.0, 1.0, 1.0))

def test_lm_bad_inputs_name_the_fix(lm):
    t = tokens()
    with pytest.raises(ValueError, match="not a hook point"): splice_metrics(lm, [t], "blocks.9.nope", lambda x: x)
    with pytest.raises(ValueError, match="bool mask shaped like tokens"): splice_metrics(lm, [(t, torch.ones(4, 8, dtype=torch.bool))], HOOK, lambda x: x)
    with pytest.raises(ValueError, match=r"tokens must be \[batch, seq\]"): splice_metrics(lm, [t[0]], HOOK, lambda x: x)
    with pytest.raises(ValueError, match="no prediction was scored"): splice_metrics(lm, [(t, torch.zeros(4, 9, dtype=torch.bool))], HOOK, lambda x: x)
    with pytest.raises(ValueError, match="replacement has"): splice_hook(torch.zeros(1, 2, 3))(torch.zeros(1, 2, 4))

# ---------------------------------------------------------------- with the real SAEs of sae_tutorial.sae
from sae_tutorial.sae import SAEConfig, make_sae

@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu", "gated"])
def test_evaluate_on_every_architecture_matches_direct_formulas(arch):
    torch.manual_seed(0)
    sae = make_sae(SAEConfig(d_in=12, expansion_factor=2, architecture=arch, k=3))
    x = torch.randn(600, 12) + 2
    if arch == "batchtopk":
        with torch.no_grad(): sae.train()(x[:128])            # sets the inference threshold; eval is then per-row
    res = evaluate(sae.eval(), x.split(128), D_true=sae.W_dec.detach()[torch.randperm(24)])
    with torch.no_grad(): out = sae(x)
    ref = np_recon(x.numpy(), out.x_hat.numpy())
    assert res.explained_variance == pytest.approx(ref["ev"], rel=1e-5, abs=1e-6)
    assert res.cosine_sim == pytest.approx(ref["cos"], rel=1e-5)
    assert res.l0 == pytest.approx(float((out.f != 0).sum(1).double().mean()), rel=1e-9)
    assert res.mmcs == pytest.approx(1.0) and res.d_sae == 24
    if arch == "topk": assert res.l0 <= 3

def test_float32_sae_in_a_float64_stream_and_a_float64_model():
    "Inputs are cast to the SAE's dtype, so a float64 stream (or a model in another dtype) still works."
    sae = make_sae(SAEConfig(d_in=8, expansion_factor=2))
    res = evaluate(sae, [torch.randn(50, 8, dtype=torch.float64)])
    assert res.n_tokens == 50
    lm = make_tiny_hooked_lm(d_vocab=11, d_model=8, d_mlp=16).double().eval()
    m = splice_metrics(lm, [tokens(1)], HOOK, sae)
    assert np.isfinite(m.ce_sae) and m.n_pred == 32

def test_keep_fn_by_norm_equals_the_explicit_mask(lm):
    t = tokens(21)
    with torch.no_grad():
        act = []; lm.run_with_hooks(t, fwd_hooks=[(HOOK, lambda a, hook: act.append(a))])
    norms = act[0].norm(dim=-1)
    thr = norms.median()
    f = lambda x: 0.7 * x
    by_fn = splice_metrics(lm, [t], HOOK, f, keep_fn=lambda toks, a: a.norm(dim=-1) < thr)
    explicit = splice_metrics(lm, [(t, norms < thr)], HOOK, f)
    assert by_fn == explicit and by_fn.n_pred == int((norms < thr)[:, :-1].sum())
    with pytest.raises(ValueError, match="keep_fn must return a bool mask"):
        splice_metrics(lm, [t], HOOK, f, keep_fn=lambda toks, a: a.norm(dim=-1))

def test_splice_metrics_restores_training_mode(lm):
    sae = make_sae(SAEConfig(d_in=8, expansion_factor=2)).train()
    lm.train()
    seen = []
    class Spy(torch.nn.Module):
        def __init__(self): super().__init__(); self.inner = sae
        def forward(self, x): seen.append(self.training); return self.inner(x)
    spy = Spy().train()
    splice_metrics(lm, [tokens(1)], HOOK, spy)
    assert seen == [False] and spy.training and lm.training
    lm.eval()

def test_plot_log_density_counts_dead_latents():
    import matplotlib; matplotlib.use("Agg")
    from sae_tutorial.metrics import plot_log_density
    dens = torch.tensor([0.0, 0.0, 0.0, 1e-3, 1e-2, 0.5], dtype=torch.float64)
    ax = plot_log_density({"a": dens}, lo=-5)
    assert "a (3 dead)" in [t.get_text() for t in ax.get_legend().get_texts()]
    bars = [p for p in ax.patches if type(p).__name__ == "Rectangle" and p.get_height() > 0]
    assert any(p.get_height() == 3 and p.get_x() + p.get_width() / 2 == pytest.approx(-5.5) for p in bars)

# ---------------------------------------------------------------- probes, sparse probing, absorption
from sae_tutorial.metrics import absorption, balanced_accuracy, fit_probe, sparse_probe, top_mean_diff

def test_balanced_accuracy_is_the_mean_recall_counted_by_hand():
    y = torch.tensor([0, 0, 0, 0, 1, 1, 2]); p = torch.tensor([0, 0, 1, 0, 1, 0, 0])
    assert balanced_accuracy(y, p) == pytest.approx((3 / 4 + 1 / 2 + 0) / 3)
    with pytest.raises(ValueError): balanced_accuracy(torch.tensor([]), torch.tensor([]))

def test_probe_does_not_depend_on_the_units_of_its_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 4, generator=g); y = (x[:, 1] + 0.3 * torch.randn(600, generator=g) > 0.8).long()
    a, b = fit_probe(x, y), fit_probe(x * torch.tensor([1e3, 1e-2, 5.0, 1.0]), y)   # standardised first
    torch.testing.assert_close(a.predict(x), b.predict(x * torch.tensor([1e3, 1e-2, 5.0, 1.0])))
    assert int(a.direction().abs().argmax()) == 1

def test_softmax_probe_separates_three_gaussian_clusters():
    g = torch.Generator().manual_seed(1)
    centres = torch.tensor([[4., 0.], [0., 4.], [-4., -4.]])
    y = torch.arange(3).repeat_interleave(200); x = centres[y] + torch.randn(600, 2, generator=g)
    assert balanced_accuracy(y, fit_probe(x, y, n_classes=3).predict(x)) > 0.99

def test_top_mean_diff_and_sparse_probe_find_the_planted_latent():
    g = torch.Generator().manual_seed(2)
    y = torch.rand(2000, generator=g) < 0.1
    f = torch.relu(torch.randn(2000, 30, generator=g)); f[:, 17] = y.float() * 3       # latent 17 is the label
    assert int(top_mean_diff(f, y, 1)[0]) == 17
    assert sparse_probe(f[:1000], y[:1000], f[1000:], y[1000:], ks=(1,))[1] == 1.0
    with pytest.raises(ValueError): top_mean_diff(f, torch.zeros(2000, dtype=torch.bool), 1)

def test_absorption_counted_by_hand():
    W_dec = torch.tensor([[1., 0.], [0.6, 0.8], [0., 1.]])    # latent 1 is aligned with the concept (cos 0.6), 2 is not
    f_train = torch.tensor([[2., 0., 0.], [2., 0., 0.], [0., 0., 1.]]); y_train = torch.tensor([True, True, False])
    f_test = torch.tensor([[1., 0., 0.],      # main latent fires
                           [0., 2., 0.],      # silent; an aligned latent fires: absorbed
                           [0., 0., 3.],      # silent; only an orthogonal latent fires: a false negative, not absorbed
                           [0., 0., 0.]])     # nothing fires
    a = absorption(f_train, y_train, f_test, W_dec, torch.tensor([1., 0.]), tau=0.5)
    assert (a.latent, a.n) == (0, 4)
    assert a.false_negative == pytest.approx(3 / 4) and a.absorbed == pytest.approx(1 / 4)
    assert absorption(f_train, y_train, f_test, W_dec, torch.tensor([1., 0.]), tau=0.7).absorbed == 0.0


@pytest.mark.parametrize("call, match", [
    (lambda: balanced_accuracy(torch.tensor([0, 1, 1]), torch.tensor([0, 1])), "one label per row"),
    (lambda: fit_probe(torch.randn(4, 3), torch.tensor([0, 1, 2, 0])), r"labels must lie in 0\.\.1"),
    (lambda: fit_probe(torch.randn(4, 3), torch.tensor([0, 1, -1, 0])), r"labels must lie in 0\.\.1"),
    (lambda: fit_probe(torch.randn(0, 3), torch.tensor([], dtype=torch.long)), "n >= 1"),
    (lambda: top_mean_diff(torch.rand(4, 3), torch.tensor([1, 0, 1, 0]), 4), r"k=4 must lie in 1\.\.3"),
    (lambda: top_mean_diff(torch.rand(4, 3), torch.tensor([1, 0, 1]), 1), r"f must be \[n, d_sae\] and y \[n\]"),
])
def test_probing_helpers_refuse_bad_input_with_the_fix(call, match):
    with pytest.raises(ValueError, match=match): call()


def test_memory_estimate_covers_every_architecture():
    from sae_tutorial.distributed import memory_estimate
    from sae_tutorial.sae import ARCHITECTURES
    for arch in ARCHITECTURES: memory_estimate(576, 4.0, 1024, architecture=arch)
