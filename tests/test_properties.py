"""Property-based tests (hypothesis) of the invariants of losses.py and metrics.py (issue #13).

Every property is checked against something independent: an exact rational (fractions.Fraction) or float64
numpy formula written here, or a true mathematical invariant (permutation, rescaling, offset, splitting).
Hypothesis draws float32-representable values (what SAE activations are) including zeros, ties and
extreme magnitudes. Example counts are kept small so the file runs in well under a minute on 2 shared cores.
Run: SAE_TUTORIAL_BUDGET=ci python -m pytest -q tests/test_properties.py
(SAE_TUTORIAL_HYPOTHESIS_X=20 multiplies every example count, for a deeper search before a release. By default the
examples are derandomized, so CI sees the same ones every run; with SAE_TUTORIAL_HYPOTHESIS_X > 1 they are random.)
"""
from fractions import Fraction
import math, os
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from sae_tutorial.sae import SAEConfig, make_sae
from sae_tutorial.losses import (reconstruction_loss, normalized_mse, l1_penalty, l1_wdec_penalty, smooth_l0_penalty,
                                 hoyer_penalty, tanh_penalty, jumprelu_l0_penalty, dead_penalty, diversity_penalty, LossConfig, sae_loss)
from sae_tutorial.metrics import (mse, explained_variance, fvu, cosine_sim, relative_reconstruction_bias,
                                  ReconstructionStats, l0, l1, feature_density, dead_fraction, utilization,
                                  SparsityStats, match_dictionaries, mmcs, ce_loss_recovered)

_X = int(os.environ.get("SAE_TUTORIAL_HYPOTHESIS_X", "1"))   # e.g. 20 for a deeper (slower) search
_HC = [HealthCheck.too_slow, HealthCheck.filter_too_much]
_FIXED = _X == 1                                                # CI: the same examples every run (no flaky red)
FEW = settings(max_examples=30 * _X, deadline=None, suppress_health_check=_HC, derandomize=_FIXED, database=None if _FIXED else settings.default.database)
SOME = settings(max_examples=60 * _X, deadline=None, suppress_health_check=_HC, derandomize=_FIXED, database=None if _FIXED else settings.default.database)

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

# ---------------------------------------------------------------- strategies
def f32(lo=-1e4, hi=1e4):
    "float32-representable values (zeros, tiny and subnormal ones included), as float64."
    return st.floats(lo, hi, width=32, allow_nan=False, allow_infinity=False)

@st.composite
def pairs(draw, max_n=12, max_d=5, elems=None):
    "(x, x_hat) float64 arrays of one shape [n, d]; x_hat is x plus drawn noise, or drawn freely."
    n, d = draw(st.integers(1, max_n)), draw(st.integers(1, max_d))
    e = elems or f32()
    x = draw(arrays(np.float64, (n, d), elements=e))
    if draw(st.booleans()): x_hat = draw(arrays(np.float64, (n, d), elements=e))
    else: x_hat = (x + draw(arrays(np.float64, (n, d), elements=f32(-1, 1)))).astype(np.float32).astype(np.float64)
    return x, x_hat

@st.composite
def sparse_codes(draw, max_n=12, max_d=8):
    "f [n, d_sae] >= 0 with many exact zeros (what a ReLU-family SAE emits)."
    n, d = draw(st.integers(1, max_n)), draw(st.integers(1, max_d))
    vals = draw(arrays(np.float64, (n, d), elements=f32(0, 1e3)))
    mask = draw(arrays(np.bool_, (n, d)))
    return vals * mask

def T(a, dtype=torch.float64): return torch.tensor(np.asarray(a), dtype=dtype)

def frac_sums(x, x_hat):
    "Exact (SSE, Σ‖x - mean‖², Σ x_hat·x, Σ‖x_hat‖²) as Fractions: the values are exact binary floats."
    X = [[Fraction(float(v)) for v in row] for row in x]; H = [[Fraction(float(v)) for v in row] for row in x_hat]
    n, d = len(X), len(X[0])
    mean = [sum(X[r][j] for r in range(n)) / n for j in range(d)]
    sse = sum((X[r][j] - H[r][j])**2 for r in range(n) for j in range(d))
    var = sum((X[r][j] - mean[j])**2 for r in range(n) for j in range(d))
    dot = sum(X[r][j] * H[r][j] for r in range(n) for j in range(d))
    hh = sum(H[r][j]**2 for r in range(n) for j in range(d))
    return sse, var, dot, hh

@st.composite
def offset_pairs(draw, max_n=12, max_d=5):
    "(x, x_hat) float32-representable, a large common offset with a spread of a few float32 ulps (ill-conditioned)."
    n, d = draw(st.integers(2, max_n)), draw(st.integers(1, max_d))
    c = np.float32(draw(st.floats(1.0, 1e6, width=32)) * draw(st.sampled_from([-1, 1])))
    ulp = np.spacing(np.abs(c))
    ints = st.integers(-8, 8)
    x = (c + draw(arrays(np.int64, (n, d), elements=ints)).astype(np.float32) * ulp).astype(np.float32)
    x_hat = (c + draw(arrays(np.int64, (n, d), elements=ints)).astype(np.float32) * ulp).astype(np.float32)
    return x.astype(np.float64), x_hat.astype(np.float64)

def distinct_rows(x): return len({tuple(r) for r in np.asarray(x).tolist()}) > 1

# ================================================================ losses
@SOME
@given(pairs())
def test_reconstruction_loss_is_exact_mean_row_sse_and_zero_iff_equal(p):
    x, x_hat = p
    sse, *_ = frac_sums(x, x_hat)
    got = float(reconstruction_loss(T(x), T(x_hat)))
    assert got >= 0
    assert got == pytest.approx(float(sse / len(x)), rel=1e-12, abs=1e-300)
    assert (got == 0) == bool(np.array_equal(x, x_hat))
    assert float(reconstruction_loss(T(x_hat), T(x))) == got                    # symmetric
    assert float(reconstruction_loss(T(x), T(x))) == 0.0

@FEW
@given(pairs(), st.randoms(use_true_random=False))
def test_reconstruction_and_normalized_mse_invariant_to_batch_permutation(p, rnd):
    x, x_hat = p
    perm = list(range(len(x))); rnd.shuffle(perm)
    assert float(reconstruction_loss(T(x[perm]), T(x_hat[perm]))) == pytest.approx(float(reconstruction_loss(T(x), T(x_hat))), rel=1e-12)
    assume(distinct_rows(x))
    assert float(normalized_mse(T(x[perm]), T(x_hat[perm]))) == pytest.approx(float(normalized_mse(T(x), T(x_hat))), rel=1e-9)

@SOME
@given(pairs())
def test_normalized_mse_is_exact_fvu_and_agrees_with_metrics(p):
    x, x_hat = p
    assume(distinct_rows(x))
    sse, var, *_ = frac_sums(x, x_hat)
    ref = float(sse / var)
    assert fvu(T(x), T(x_hat)) == pytest.approx(ref, rel=1e-9, abs=1e-12)      # the training loss is the metric
    got = float(normalized_mse(T(x), T(x_hat)))
    if var > Fraction(1e-12) * sum(Fraction(float(v))**2 for v in x.ravel()):  # above the loss's relative floor
        assert got == pytest.approx(ref, rel=1e-9, abs=1e-300)
    else: assert 0 <= got <= ref * (1 + 1e-9) and math.isfinite(got)           # floored: finite, never above the truth
    s = 2.0 ** -100                                                              # scale-free: tiny activations too
    assert float(normalized_mse(T(s * x), T(s * x_hat))) == pytest.approx(got, rel=1e-12, abs=1e-300)

@SOME
@given(sparse_codes(), st.floats(1e-3, 1e3))
def test_l1_is_numpy_and_linear_in_f_and_coefficient(f, c):
    ref = np.abs(f).sum(1).mean()
    assert float(l1_penalty(T(f))) == pytest.approx(ref, rel=1e-12, abs=1e-300)
    assert float(l1_penalty(T(c * f))) == pytest.approx(c * ref, rel=1e-12, abs=1e-300)
    assert float(l1_penalty(T(-f))) == pytest.approx(ref, rel=1e-12, abs=1e-300)   # |·|: sign does not matter
    # the sparsity term of sae_loss scales linearly with its coefficient, everything else unchanged
    sae = make_sae(SAEConfig(d_in=3, expansion_factor=2), dtype=torch.float64)
    x = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(4, 3)
    out = sae(x)
    a, b = (sae_loss(sae, x, out, LossConfig(sparsity="l1"), sparsity_coeff=s) for s in (1.0, c))
    assert float((b.total - b.recon).detach()) == pytest.approx(c * float((a.total - a.recon).detach()), rel=1e-12, abs=1e-300)
    assert float(a.recon.detach()) == float(b.recon.detach()) and float(a.sparsity.detach()) == float(b.sparsity.detach())

@SOME
@given(sparse_codes(), st.data())
def test_l1_wdec_is_numpy_and_invariant_to_decoder_rescaling(f, data):
    d_sae, d_in = f.shape[1], data.draw(st.integers(1, 4))
    W = data.draw(arrays(np.float64, (d_sae, d_in), elements=f32(-10, 10)))
    ref = (np.abs(f) * np.linalg.norm(W, axis=1)).sum(1).mean()
    assert float(l1_wdec_penalty(T(f), T(W))) == pytest.approx(ref, rel=1e-10, abs=1e-300)
    # f_i -> f_i / s_i with W_dec[i] -> s_i W_dec[i] leaves x_hat and this penalty unchanged (plain L1 changes)
    s = data.draw(arrays(np.float64, (d_sae,), elements=st.floats(1e-2, 1e2)))
    assert float(l1_wdec_penalty(T(f / s), T(W * s[:, None]))) == pytest.approx(ref, rel=1e-9, abs=1e-300)
    np.testing.assert_allclose((f / s) @ (W * s[:, None]), f @ W, rtol=1e-9, atol=1e-9 * np.abs(f).max() * np.abs(W).max())
    # with unit-norm rows it is the plain L1
    Wn = W / np.where(np.linalg.norm(W, axis=1, keepdims=True) > 0, np.linalg.norm(W, axis=1, keepdims=True), 1)
    assume((np.linalg.norm(W, axis=1) > 0).all())
    assert float(l1_wdec_penalty(T(f), T(Wn))) == pytest.approx(float(l1_penalty(T(f))), rel=1e-12, abs=1e-300)

@SOME
@given(sparse_codes(), st.floats(1.0, 50.0), st.floats(-5.0, 0.0, exclude_max=True))
def test_smooth_l0_counts_between_zero_and_d_sae_and_is_numpy(f, alpha, beta):
    sig = lambda z: 1 / (1 + np.exp(-z))
    ref = ((sig(alpha * f + beta) - sig(beta)) / (1 - sig(beta))).sum(1).mean()
    got = float(smooth_l0_penalty(T(f), alpha, beta))
    assert got == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert -1e-12 <= got <= f.shape[1] + 1e-12                         # a soft count of active latents
    assert got <= float((f != 0).sum(1).mean()) + 1e-12                  # never above the hard L0 (each term <= 1, 0 at f=0)
    assert float(smooth_l0_penalty(T(2 * f), alpha, beta)) >= got - 1e-12   # monotone in f >= 0

@SOME
@given(sparse_codes(), st.floats(1e-3, 1e3))
def test_hoyer_lies_between_one_and_sqrt_l0_and_is_scale_invariant(f, c):
    l1r, l2r = np.abs(f).sum(1), np.linalg.norm(f, axis=1)
    nz = l2r > 0
    ref = np.where(nz, l1r / np.where(nz, l2r, 1), 0).mean()
    got = float(hoyer_penalty(T(f)))
    assert got == pytest.approx(ref, rel=1e-9, abs=1e-12)
    per_row = [float(hoyer_penalty(T(f[i:i + 1]))) for i in range(len(f))]
    for h, row in zip(per_row, f):
        k = int((row != 0).sum())
        if k == 0: assert h == 0
        else: assert 1 - 1e-12 <= h <= math.sqrt(k) * (1 + 1e-12)        # Cauchy-Schwarz
    assert float(hoyer_penalty(T(c * f))) == pytest.approx(got, rel=1e-9, abs=1e-12)

@SOME
@given(sparse_codes(), st.floats(1e-3, 10.0))
def test_tanh_penalty_is_numpy_and_bounded_by_l0(f, s):
    got = float(tanh_penalty(T(f), s))
    assert got == pytest.approx(np.tanh(s * f).sum(1).mean(), rel=1e-12, abs=1e-300)
    assert 0 <= got <= float((f != 0).sum(1).mean()) + 1e-12

@SOME
@given(st.integers(1, 9), st.integers(1, 5), st.data())
def test_diversity_is_numpy_offdiagonal_gram_and_invariant_to_chunks_order_and_signs(d_sae, d_in, data):
    W = data.draw(arrays(np.float64, (d_sae, d_in), elements=f32(-10, 10)))
    G = W @ W.T
    ref = np.abs(G).sum() - np.abs(np.diag(G)).sum()
    chunk = data.draw(st.integers(1, d_sae + 2))
    got = float(diversity_penalty(T(W), chunk=chunk))
    scale = (np.abs(W).sum(1)**2).sum() + 1e-300
    assert abs(got - ref) <= 1e-12 * scale
    perm = data.draw(st.permutations(range(d_sae)))
    signs = np.array(data.draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=d_sae, max_size=d_sae)))
    assert abs(float(diversity_penalty(T(W[list(perm)] * signs[:, None]), chunk=chunk)) - got) <= 1e-12 * scale
    assert got >= 0

@SOME
@given(st.integers(1, 9), st.integers(1, 5), st.data())
def test_dead_penalty_is_numpy(d_sae, d_in, data):
    W = data.draw(arrays(np.float64, (d_sae, d_in), elements=f32(-10, 10)))
    dead = data.draw(arrays(np.bool_, (d_sae,)))
    assert float(dead_penalty(T(W), torch.tensor(dead))) == pytest.approx((W[dead]**2).sum(), rel=1e-12, abs=1e-300)

@SOME
@given(st.integers(1, 8), st.integers(1, 9), st.data())
def test_jumprelu_l0_is_the_count_above_threshold(n, d_sae, data):
    pre = data.draw(arrays(np.float64, (n, d_sae), elements=f32(-5, 5)))
    theta = data.draw(arrays(np.float64, (d_sae,), elements=f32(2.0**-20, 5)))
    got = float(jumprelu_l0_penalty(T(pre), T(theta)))
    assert got == (pre > theta).sum(1).mean()                             # strict: pre == θ is off
    assert 0 <= got <= d_sae

# ---------------------------------------------------------------- TopK / BatchTopK activations
def _check_topk_row(f_row, pre_row, k):
    "f has exactly min(k, #positive pre) nonzeros, and they are ReLU of the k largest pre-activations."
    n_pos = int((pre_row > 0).sum())
    nz = f_row[f_row != 0]
    assert len(nz) == min(k, n_pos)
    top = np.sort(pre_row)[::-1][:k]
    np.testing.assert_array_equal(np.sort(nz)[::-1], top[top > 0])
    assert (f_row >= 0).all()
    assert np.all((f_row == 0) | (f_row == pre_row))                      # kept values are unchanged

@SOME
@given(st.integers(1, 6), st.integers(1, 12), st.data())
def test_topk_activation_on_drawn_pre_with_ties_and_zeros(n, d_sae, data):
    k = data.draw(st.integers(1, d_sae))
    sae = make_sae(SAEConfig(d_in=1, expansion_factor=d_sae, architecture="topk", k=k), dtype=torch.float64)
    pre = data.draw(arrays(np.float64, (n, d_sae), elements=st.sampled_from([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0]) | f32(-5, 5)))
    f = sae.activation(T(pre)).numpy()
    for r in range(n): _check_topk_row(f[r], pre[r], k)

@FEW
@given(st.integers(0, 2**31 - 1), st.integers(1, 6), st.booleans())
def test_topk_forward_fast_and_plain_keep_min_k_positive(seed, k, fast):
    torch.manual_seed(seed)
    sae = make_sae(SAEConfig(d_in=4, expansion_factor=2, architecture="topk", k=k, fast=fast), dtype=torch.float64)
    with torch.no_grad(): sae.b_enc.normal_(0, 1.0)                     # some rows have < k positive pre-activations
    x = torch.randn(9, 4, dtype=torch.float64)
    out = sae(x)
    for r in range(9): _check_topk_row(out.f[r].detach().numpy(), out.pre[r].detach().numpy(), k)
    np.testing.assert_allclose(out.x_hat.detach().numpy(), out.f.detach().numpy() @ sae.W_dec.detach().numpy()
                               + sae.b_dec.detach().numpy(), rtol=1e-12, atol=1e-12)

@FEW
@given(st.integers(0, 2**31 - 1), st.integers(1, 6), st.integers(1, 10))
def test_batchtopk_keeps_the_k_times_batch_largest_and_is_permutation_equivariant(seed, k, B):
    torch.manual_seed(seed)
    sae = make_sae(SAEConfig(d_in=4, expansion_factor=2, architecture="batchtopk", k=k), dtype=torch.float64).train()
    with torch.no_grad(): sae.b_enc.normal_(0, 1.0)
    x = torch.randn(B, 4, dtype=torch.float64)
    out = sae(x)
    pre, f = out.pre.detach().numpy().ravel(), out.f.detach().numpy().ravel()
    n_pos = int((pre > 0).sum())
    assert int((f != 0).sum()) == min(k * B, n_pos)
    if (f != 0).any() and ((f == 0) & (pre > 0)).any():
        assert f[f != 0].min() >= pre[(f == 0) & (pre > 0)].max()        # nothing dropped beats anything kept
    perm = torch.randperm(B)
    torch.testing.assert_close(sae(x[perm]).f, out.f[perm], rtol=0, atol=0)

@FEW
@given(st.integers(0, 2**31 - 1), st.sampled_from(["relu", "topk", "batchtopk", "jumprelu", "gated"]),
       st.sampled_from(["l1", "l1_wdec", "smooth_l0", "hoyer", "tanh"]), st.integers(2, 12))
def test_sae_loss_invariant_to_batch_permutation(seed, arch, sparsity, B):
    torch.manual_seed(seed)
    sae = make_sae(SAEConfig(d_in=4, expansion_factor=2, architecture=arch, k=2), dtype=torch.float64).train()
    with torch.no_grad(): sae.b_enc.normal_(0, 0.5)
    if arch == "jumprelu": sparsity = "jumprelu_l0"
    aux = {"gated": "gated", "topk": "auxk", "batchtopk": "auxk"}.get(arch, "diversity")
    cfg = LossConfig(sparsity=sparsity, aux=aux, sparsity_coeff=0.3, aux_coeff=0.5)
    dead = torch.arange(8) % 3 == 0
    x = torch.randn(B, 4, dtype=torch.float64)
    perm = torch.randperm(B)
    a = sae_loss(sae, x, sae(x), cfg, dead_mask=dead)
    b = sae_loss(sae, x[perm], sae(x[perm]), cfg, dead_mask=dead)
    for u, v in zip(a, b): assert float(u.detach()) == pytest.approx(float(v.detach()), rel=1e-10, abs=1e-12)

# ================================================================ metrics: reconstruction
@SOME
@given(pairs() | offset_pairs())
def test_explained_variance_equals_exact_rational_formula(p):
    "Any batch with at least two distinct rows has a defined EV; the float64 value matches exact arithmetic."
    x, x_hat = p
    assume(distinct_rows(x))
    sse, var, *_ = frac_sums(x, x_hat)
    ev = explained_variance(T(x), T(x_hat))
    assert 1 - ev == pytest.approx(float(sse / var), rel=1e-9, abs=1e-12)
    assert ev <= 1
    assert fvu(T(x), T(x_hat)) == pytest.approx(1 - ev, rel=1e-12, abs=1e-15)
    assert mse(T(x), T(x_hat)) == pytest.approx(float(sse) / x.size, rel=1e-12, abs=1e-300)
    assert explained_variance(T(x), T(x)) == 1.0 and explained_variance(T(x, torch.float32), T(x, torch.float32)) == 1.0

@SOME
@given(st.integers(2, 12), st.integers(1, 5), st.data())
def test_explained_variance_invariant_to_offset_scale_and_row_order(n, d, data):
    # multiples of 2^-8 below 2^16 plus an integer offset below 2^20: every shifted value is exact in float64
    grid = st.integers(-2**24, 2**24).map(lambda i: i / 256)
    x = data.draw(arrays(np.float64, (n, d), elements=grid))
    x_hat = data.draw(arrays(np.float64, (n, d), elements=grid))
    assume(distinct_rows(x))
    c = data.draw(arrays(np.float64, (d,), elements=st.integers(-2**20, 2**20).map(float)))
    ev = explained_variance(T(x), T(x_hat))
    assert explained_variance(T(x + c), T(x_hat + c)) == pytest.approx(ev, rel=1e-9, abs=1e-9)
    s = 2.0 ** data.draw(st.integers(-60, 60))                           # powers of two: exact scaling
    assert explained_variance(T(s * x), T(s * x_hat)) == pytest.approx(ev, rel=1e-12, abs=1e-12)
    perm = data.draw(st.permutations(range(n)))
    assert explained_variance(T(x[list(perm)]), T(x_hat[list(perm)])) == pytest.approx(ev, rel=1e-9, abs=1e-9)
    # the constant guess x_hat = mean(x) scores 0
    assert explained_variance(T(x), T(x).mean(0).expand(n, d)) == pytest.approx(0.0, abs=1e-9)

@SOME
@given(pairs())
def test_cosine_sim_in_unit_interval_and_numpy_and_row_scale_invariant(p):
    x, x_hat = p
    nx, nh = np.linalg.norm(x, axis=1), np.linalg.norm(x_hat, axis=1)
    ref = []
    for a, b, na, nb in zip(x, x_hat, nx, nh):
        if na == 0 and nb == 0: ref.append(1.0)
        elif na == 0 or nb == 0: ref.append(0.0)
        else: ref.append(float((a / na) @ (b / nb)))
    c = cosine_sim(T(x), T(x_hat))
    assert -1.0 <= c <= 1.0
    assert c == pytest.approx(np.mean(ref), rel=1e-9, abs=1e-12)
    assert cosine_sim(T(x), T(x)) == pytest.approx(1.0, abs=1e-12)
    s = 2.0 ** np.arange(len(x)) % 7                                    # positive per-row factors 1, 2, 4, 1, 2, ...
    s = np.where(s == 0, 3.0, s)
    assert cosine_sim(T(x), T(x_hat * s[:, None])) == pytest.approx(c, rel=1e-9, abs=1e-12)

@SOME
@given(pairs(), st.floats(1e-3, 1e3))
def test_relative_bias_is_exact_and_recovers_a_pure_shrinkage(p, c):
    x, x_hat = p
    *_, dot, hh = frac_sums(x, x_hat)
    if dot > 0: assert relative_reconstruction_bias(T(x), T(x_hat)) == pytest.approx(float(hh / dot), rel=1e-9)
    else:
        with pytest.raises(ValueError, match="not positive"): relative_reconstruction_bias(T(x), T(x_hat))
    assume((x != 0).any())
    assert relative_reconstruction_bias(T(x), T(c * x)) == pytest.approx(c, rel=1e-9)

@SOME
@given(pairs(max_n=16) | offset_pairs(max_n=16), st.data())
def test_reconstruction_stats_any_split_equals_one_pass(p, data):
    x, x_hat = p
    n = len(x)
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=6)))   # may repeat: empty chunks
    bounds = [0, *cuts, n]
    s = ReconstructionStats()
    for a, b in zip(bounds[:-1], bounds[1:]): s.update(T(x[a:b]), T(x_hat[a:b]))
    one = ReconstructionStats().update(T(x), T(x_hat))
    sse, var, dot, hh = frac_sums(x, x_hat)
    if not distinct_rows(x):
        for st_ in (s, one):
            with pytest.raises(ValueError, match="zero variance"): st_.compute()
        return
    r, r1 = s.compute(), one.compute()
    assert r.n == r1.n == n
    assert r.fvu == pytest.approx(float(sse / var), rel=1e-9, abs=1e-12)
    assert r1.fvu == pytest.approx(float(sse / var), rel=1e-9, abs=1e-12)
    assert r.mse == pytest.approx(r1.mse, rel=1e-12, abs=1e-300)
    assert r.cosine_sim == pytest.approx(r1.cosine_sim, rel=1e-12, abs=1e-15)
    if dot > 0: assert r.rel_bias == pytest.approx(float(hh / dot), rel=1e-9)
    # EV = 1 - FVU inherits FVU's absolute error, so it is compared on that scale (near EV = 0 a relative check
    # would magnify float64 rounding of badly conditioned data, e.g. rows equal to 6 digits)
    for ev in (r.explained_variance, explained_variance(T(x), T(x_hat))):
        assert 1 - ev == pytest.approx(float(sse / var), rel=1e-9, abs=1e-12)

# ================================================================ metrics: sparsity
@SOME
@given(sparse_codes(max_d=10), st.data())
def test_sparsity_metrics_are_numpy_counts_and_any_split_equals_one_pass(f, data):
    n, d_sae = f.shape
    f = f * np.where(data.draw(arrays(np.bool_, (d_sae,))), -1, 1)      # signs do not matter to L0/density
    nnz = (f != 0)
    assert 0 <= l0(T(f)) <= d_sae
    assert l0(T(f)) == pytest.approx(nnz.sum(1).mean(), rel=1e-15)
    dens = feature_density(T(f)).numpy()
    assert ((0 <= dens) & (dens <= 1)).all()
    np.testing.assert_array_equal(dens, nnz.mean(0))
    assert l0(T(f)) == pytest.approx(dens.sum(), rel=1e-12)             # mean row count = sum of column rates
    assert l1(T(f)) == pytest.approx(np.abs(f).sum(1).mean(), rel=1e-12, abs=1e-300)
    assert dead_fraction(T(dens)) == (dens == 0).mean()
    assert utilization(T(dens)) == pytest.approx(1 - dead_fraction(T(dens)), abs=1e-15)
    theta = data.draw(st.floats(0, 1))
    assert utilization(T(dens), theta) == (dens > theta).mean()
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=5)))
    bounds = [0, *cuts, n]
    s = SparsityStats(theta)
    for a, b in zip(bounds[:-1], bounds[1:]): s.update(T(f[a:b]))
    m = s.compute()
    assert m.n == n and torch.equal(m.density, feature_density(T(f)))   # integer counts: exact
    assert m.l0 == pytest.approx(l0(T(f)), rel=1e-15) and m.l1 == pytest.approx(l1(T(f)), rel=1e-12, abs=1e-300)
    assert m.dead_fraction == dead_fraction(m.density) and m.utilization == utilization(m.density, theta)

# ================================================================ metrics: dictionaries
@st.composite
def dictionaries(draw, max_n=8, max_d=5):
    n, d = draw(st.integers(1, max_n)), draw(st.integers(1, max_d))
    D = draw(arrays(np.float64, (n, d), elements=f32(-10, 10)))
    assume((np.linalg.norm(D, axis=1) > 0).all())
    return D

def np_max_cos(A, B):
    nb = np.linalg.norm(B, axis=1, keepdims=True)
    An, Bn = A / np.linalg.norm(A, axis=1, keepdims=True), B / np.where(nb > 0, nb, 1)
    return (An @ Bn.T).max(1)

@SOME
@given(dictionaries(), dictionaries(), st.data())
def test_mmcs_bounded_numpy_and_invariant_to_permutation_and_positive_rescaling(A, B, data):
    assume(A.shape[1] == B.shape[1])
    m = match_dictionaries(T(A), T(B))
    assert ((-1 <= m.max_cos) & (m.max_cos <= 1)).all() and -1 <= m.mmcs <= 1
    np.testing.assert_allclose(m.max_cos.numpy(), np_max_cos(A, B), rtol=1e-9, atol=1e-12)
    assert mmcs(T(A), T(A)) == pytest.approx(1.0, abs=1e-12)           # a dictionary matches itself
    perm = list(data.draw(st.permutations(range(len(B)))))
    s = 2.0 ** data.draw(arrays(np.float64, (len(B), 1), elements=st.integers(-100, 100).map(float)))
    m2 = match_dictionaries(T(A), T(B[perm] * s))
    np.testing.assert_allclose(m2.max_cos.numpy(), m.max_cos.numpy(), rtol=1e-12, atol=1e-12)
    assert m2.mmcs == pytest.approx(m.mmcs, rel=1e-12, abs=1e-12)
    # adding learned rows never lowers any best cosine
    m3 = match_dictionaries(T(A), T(np.concatenate([B, A[:1]])))
    assert (m3.max_cos >= m.max_cos - 1e-12).all()

@SOME
@given(dictionaries(), st.data())
def test_mmcs_of_rescaled_dictionary_with_itself_is_one(D, data):
    "A decoder matched against itself, row-permuted and rescaled by any positive factor (tiny or huge), is found exactly."
    s = 10.0 ** data.draw(arrays(np.float64, (len(D), 1), elements=st.floats(-30, 30)))
    perm = list(data.draw(st.permutations(range(len(D)))))
    for dt in (torch.float32, torch.float64):
        if dt == torch.float32 and not np.isfinite((D[perm] * s).astype(np.float32)).all(): continue
        learned = T(D[perm] * s, dt)
        if (learned.norm(dim=1) == 0).any(): continue                     # underflowed to zero in float32
        assert mmcs(T(D), learned) == pytest.approx(1.0, abs=1e-6 if dt == torch.float32 else 1e-12)

# ================================================================ CE loss recovered (the formula)
@SOME
@given(st.floats(0, 20), st.floats(1e-3, 20), st.floats(-5, 5))
def test_ce_loss_recovered_is_one_for_identity_zero_for_ablation_and_affine(ce_clean, gap, t):
    ce_abl = ce_clean + gap
    assert ce_loss_recovered(ce_clean, ce_clean, ce_abl) == 1.0
    assert ce_loss_recovered(ce_clean, ce_abl, ce_abl) == 0.0
    ce_sae = ce_abl - t * gap                                            # recovers the fraction t of the gap
    assert ce_loss_recovered(ce_clean, ce_sae, ce_abl) == pytest.approx(t, rel=1e-9, abs=1e-9)
    assert math.isnan(ce_loss_recovered(ce_abl, ce_sae, ce_clean))       # ablation lowering the loss: undefined
