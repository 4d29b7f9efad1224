"""The fast paths of sae_tutorial.sae / losses (cfg.fast, the default) against independent references.

test_fast_pkg.py checks fast == plain for every architecture; here: the TopK decode against an explicit loop
over rows, float32 and leading dimensions, several training steps, and the L1 penalties without abs against
losses.l1_penalty / l1_wdec_penalty. Run: python -m pytest -q tests/test_fast_paths.py
"""
import pytest
import torch

from sae_tutorial.losses import LossConfig, l1_penalty, l1_wdec_penalty, sparsity_penalty
from sae_tutorial.sae import SAEConfig, make_sae


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _pair(arch, d_in=12, exp=4.0, k=5, seed=0, **kw):
    torch.manual_seed(seed)
    plain = make_sae(SAEConfig(d_in=d_in, expansion_factor=exp, architecture=arch, k=k, fast=False, **kw),
                     dtype=torch.float64)
    with torch.no_grad():  # non-trivial biases so every term of the gradient is exercised
        plain.b_enc.normal_(0, 0.1); plain.b_dec.normal_(0, 0.3)
    fast = make_sae(SAEConfig(d_in=d_in, expansion_factor=exp, architecture=arch, k=k, fast=True, **kw),
                    dtype=torch.float64)
    fast.load_state_dict(plain.state_dict())
    return plain, fast


def test_topk_fast_leading_dims_and_float32():
    plain, fast = _pair("topk", d_in=16, exp=8.0, k=3)
    plain, fast = plain.float(), fast.float()
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(fast(x).x_hat, plain(x).x_hat, rtol=1e-5, atol=1e-5)
    assert fast(x).f.shape == (2, 7, 128) and fast(x).pre.shape == (2, 7, 128)


def test_topk_sparse_decode_against_row_loop():
    "x_hat[b] = b_dec + Σ_j vals[b,j] W_dec[idx[b,j]], written as an explicit loop (independent of both paths)."
    _, fast = _pair("topk", d_in=10, exp=3.0, k=4)
    x = torch.randn(6, 10, dtype=torch.float64)
    out = fast(x)
    for b in range(6):
        idx = out.f[b].nonzero().flatten()
        want = fast.b_dec + sum(out.f[b, i] * fast.W_dec[i] for i in idx.tolist())
        torch.testing.assert_close(out.x_hat[b], want)
    assert ((out.f > 0).sum(-1) <= 4).all()


@pytest.mark.parametrize("arch", ["relu", "topk"])
def test_training_steps_match(arch):
    "Five Adam steps with decoder renormalisation give the same weights on both paths."
    plain, fast = _pair(arch, d_in=16, exp=4.0, k=4)
    x = torch.randn(64, 16, dtype=torch.float64)
    lcfg = LossConfig(sparsity="l1", sparsity_coeff=0.1)
    for sae in (plain, fast):
        opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
        for _ in range(5):
            out = sae(x)
            loss = (out.x_hat - x).pow(2).sum(-1).mean() + 0.1 * sparsity_penalty(sae, out, lcfg)
            opt.zero_grad(); loss.backward(); sae.remove_parallel_grad_(); opt.step(); sae.normalize_decoder_()
    for (n, a), (_, b) in zip(plain.named_parameters(), fast.named_parameters()):
        torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-10, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "gated"])
def test_nonneg_l1_penalties_match(arch):
    "The fast L1 terms (no abs) have the values and parameter gradients of l1_penalty / l1_wdec_penalty."
    _, fast = _pair(arch)
    with torch.no_grad(): fast.W_dec.mul_(torch.rand(fast.W_dec.shape[0], 1, dtype=torch.float64) + 0.5)  # non-unit norms
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    f_of = (lambda o: torch.relu(o.pre)) if arch == "gated" else (lambda o: o.f)
    for name, ref in [("l1", lambda s, o: l1_penalty(f_of(o))), ("l1_wdec", lambda s, o: l1_wdec_penalty(f_of(o), s.W_dec))]:
        grads, vals = [], []
        for fn in (ref, lambda s, o: sparsity_penalty(s, o, LossConfig(sparsity=name))):
            fast.zero_grad(set_to_none=True)
            v = fn(fast, fast(x)); v.backward(); vals.append(v.detach())
            grads.append({n: p.grad.clone() for n, p in fast.named_parameters() if p.grad is not None})
        torch.testing.assert_close(vals[1], vals[0])
        assert set(grads[0]) == set(grads[1])
        for n in grads[0]: torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-9, atol=1e-12)
    assert (f_of(fast(x)) >= 0).all()


def test_l1_by_hand():
    "A hand-worked l1_wdec: f = [[1, 0], [3, 2]], ‖W_dec rows‖ = [5, 2] -> ((5) + (15 + 4)) / 2 = 12."
    sae = make_sae(SAEConfig(d_in=2, expansion_factor=1.0, normalize_decoder=False), dtype=torch.float64)
    with torch.no_grad(): sae.W_dec.copy_(torch.tensor([[3., 4.], [0., 2.]]))
    from sae_tutorial.sae import SAEOutput
    out = SAEOutput(x_hat=torch.zeros(2, 2, dtype=torch.float64), f=torch.tensor([[1., 0.], [3., 2.]], dtype=torch.float64),
                    pre=torch.zeros(2, 2, dtype=torch.float64))
    assert sparsity_penalty(sae, out, LossConfig(sparsity="l1_wdec")).item() == pytest.approx(12.0)
    assert sparsity_penalty(sae, out, LossConfig(sparsity="l1")).item() == pytest.approx(3.0)


def test_usage_update_counts_by_hand():
    "FeatureUsage.update's int32 counts: dtype long, equal to a hand count over the window; last_counts = this batch."
    from sae_tutorial.train import FeatureUsage
    torch.manual_seed(0)
    fs = [torch.relu(torch.randn(7, 20) - 1.0) for _ in range(5)]
    u = FeatureUsage(20, window=14)
    for f in fs:
        u.update(f)
        assert u.counts.dtype == u.last_counts.dtype == torch.long
        assert torch.equal(u.last_counts, (f > 0).long().sum(0))
    assert torch.equal(u.counts, sum((f > 0).long().sum(0) for f in fs[-2:]))   # the window holds the last 2 batches


@pytest.mark.parametrize("dead_threshold", [0.0, 0.05])
def test_history_l0_is_mean_active_count(dead_threshold):
    "train()'s logged L0 (from the usage counts when theta = 0) is the mean number of f_i > 0 per row, replayed by hand."
    from sae_tutorial.train import TrainConfig, train
    torch.manual_seed(0)
    x = [torch.randn(16, 8) for _ in range(3)]
    sae = make_sae(SAEConfig(d_in=8, expansion_factor=4))
    ref = make_sae(SAEConfig(d_in=8, expansion_factor=4)); ref.load_state_dict(sae.state_dict())
    res = train(sae, x, LossConfig(sparsity="l1", sparsity_coeff=1e-3),
                TrainConfig(lr=1e-3, steps=3, progress=False, log_every=1, dead_threshold=dead_threshold))
    # replay: the first step's L0 comes from the initial weights
    want0 = (ref(x[0]).f > 0).sum(-1).double().mean().item()
    assert res.history.l0[0] == pytest.approx(want0)
    assert len(res.history.l0) == 3 and all(0 <= v <= 32 for v in res.history.l0)


def _sparse_relu(monkeypatch):
    "A ReLU pair whose fast forward takes the sparse branch (every density allowed)."
    from sae_tutorial.sae import ReLUSAE
    monkeypatch.setattr(ReLUSAE, "sparse_max_density", 1.0)
    return _pair("relu", d_in=12, exp=4.0)


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk"])
def test_sparse_output_reads_as_the_dense_f(arch, monkeypatch):
    """The fast forward keeps f as pairs (`out.active`) and builds the dense f when read: `.f`, out[1], unpacking and
    _asdict all give the plain path's f; the pairs list exactly f's entries, row by row."""
    plain, fast = _sparse_relu(monkeypatch) if arch == "relu" else _pair(arch, d_in=12, exp=4.0, k=5)
    x = torch.randn(3, 4, 12, dtype=torch.float64)                   # leading dims [3, 4]
    out, ref = fast(x), plain(x).f
    a = out.active
    assert a is not None and plain(x).active is None
    torch.testing.assert_close(out.f, ref)
    x_hat, f, pre, pre_mag, active = out                              # unpacking
    torch.testing.assert_close(f, ref); torch.testing.assert_close(out[1], ref); torch.testing.assert_close(out._asdict()["f"], ref)
    assert pre_mag is None and active is a
    dense = torch.zeros(12, 48, dtype=torch.float64)
    for n in range(len(a.cols)): dense[a.rows[n], a.cols[n]] = a.vals[n]          # the pairs written out one by one
    torch.testing.assert_close(dense.reshape(3, 4, 48), ref)
    assert torch.equal(a.crow, torch.searchsorted(a.rows, torch.arange(13)))     # row b's pairs: crow[b]:crow[b+1]
    assert (a.rows[1:] >= a.rows[:-1]).all()


@pytest.mark.parametrize("threshold", [0.0, 0.3])
def test_firings_active_equals_dense_count(threshold):
    "FeatureUsage.firings_active(out.active) == firings(out.f), including TopK rows whose top k holds zeros."
    from sae_tutorial.train import FeatureUsage
    _, fast = _pair("topk", d_in=12, exp=4.0, k=6)
    with torch.no_grad(): fast.b_enc.sub_(torch.linspace(0, 3, 48, dtype=torch.float64))   # many latents below 0
    out = fast(torch.randn(40, 12, dtype=torch.float64))
    assert (out.active.vals == 0).any()                                # some listed entries are zero
    u = FeatureUsage(48, window=100, threshold=threshold)
    want = torch.tensor([int((out.f[:, i] > threshold).sum()) for i in range(48)])   # counted column by column
    assert torch.equal(u.firings_active(out.active), want) and torch.equal(u.firings(out.f), want)


@pytest.mark.parametrize("arch,sparsity", [("topk", "none"), ("topk", "l1"), ("relu", "l1"), ("relu", "l1_wdec"),
                                           ("batchtopk", "none")])
def test_train_never_builds_the_dense_f(arch, sparsity, monkeypatch):
    """train() on the fast path reads f only through out.active (losses, firing counts, L0): building the dense f
    would fail here; its history equals training the plain path (float64)."""
    from sae_tutorial.fast import ActiveLatents
    from sae_tutorial.train import TrainConfig, train
    plain, fast = _sparse_relu(monkeypatch) if arch == "relu" else _pair(arch, d_in=12, exp=4.0, k=5)
    torch.manual_seed(1)
    x = [torch.randn(32, 12, dtype=torch.float64) for _ in range(6)]
    lcfg, tcfg = LossConfig(sparsity=sparsity, sparsity_coeff=0.05), TrainConfig(lr=1e-2, progress=False, log_every=1)
    ref = train(plain, x, lcfg, tcfg)
    def no_dense(self): raise AssertionError("the training step built the dense f")
    monkeypatch.setattr(ActiveLatents, "dense", no_dense)
    res = train(fast, x, lcfg, tcfg)
    for k in ("loss", "l0", "dead", "mse"):
        torch.testing.assert_close(torch.tensor(getattr(res.history, k), dtype=torch.float64),
                                   torch.tensor(getattr(ref.history, k), dtype=torch.float64), rtol=1e-8, atol=1e-10)
    assert res.history.l0[0] > 0
    if arch == "batchtopk": torch.testing.assert_close(fast.threshold, plain.threshold)   # the same EMA threshold


def test_batchtopk_threshold_update_by_hand():
    "update_threshold_: the first batch sets the smallest positive kept value, later ones the EMA; none positive: unchanged."
    sae = make_sae(SAEConfig(d_in=4, expansion_factor=2, architecture="batchtopk", k=2, batchtopk_threshold_decay=0.75))
    sae.update_threshold_(torch.tensor([0.0, 0.5, 0.2, 0.9]))
    assert sae.threshold.item() == pytest.approx(0.2)
    sae.update_threshold_(torch.tensor([0.0, 0.0]))                    # nothing positive kept
    assert sae.threshold.item() == pytest.approx(0.2)
    sae.update_threshold_(torch.tensor([0.6, 1.0]))
    assert sae.threshold.item() == pytest.approx(0.75 * 0.2 + 0.25 * 0.6)


@pytest.mark.parametrize("groups", [None, 1, 2, 4, 5, 7, 16, 40])
def test_row_topk_two_stage_picks_torch_topk_set(groups):
    """row_topk over G slices picks the same columns as torch.topk (distinct values); with ties its values are the
    same multiset; G that does not split S into slices of >= k columns falls back to one torch.topk."""
    from sae_tutorial.fast import row_topk
    g = torch.Generator().manual_seed(0)
    pre = torch.randn(33, 80, generator=g)
    pre[0, :20] = 5.0                                                   # one row whose top 6 is all ties
    pre[1] = torch.arange(80.0)                                         # top 6 all in the last slice
    v, i = row_topk(pre, 6, groups)
    ref = pre.topk(6, dim=-1)
    torch.testing.assert_close(v.sort(-1).values, ref.values.sort(-1).values, rtol=0, atol=0)
    assert torch.equal(pre.gather(1, i), v) and (i.sort(-1).values[:, 1:] > i.sort(-1).values[:, :-1]).all()
    assert torch.equal(i[1:].sort(-1).values, ref.indices[1:].sort(-1).values)


@pytest.mark.parametrize("B,S,k", [(33, 80, 6), (5, 2304, 64), (40, 4608, 32), (3, 128, 32), (7, 96, 1)])
def test_threshold_topk_picks_torch_topk_set(B, S, k):
    """threshold_topk (the CPU filter behind row_topk's default) picks torch.topk's columns (distinct values); with
    ties (a row of equal entries, rows of -inf, rows whose top is all in one slice) the same multiset of values."""
    from sae_tutorial.fast import threshold_topk
    g = torch.Generator().manual_seed(B)
    pre = torch.randn(B, S, generator=g)
    pre[0, : 3 * k] = 5.0                                               # ties across the k-th place
    pre[1] = torch.arange(float(S))                                     # the top k in the last slices
    if B > 2: pre[2] = -torch.inf                                       # every entry equal (and -inf)
    got = threshold_topk(pre, k)
    assert got is not None
    v, i = got
    ref = pre.topk(k, dim=-1)
    torch.testing.assert_close(v.sort(-1).values, ref.values.sort(-1).values, rtol=0, atol=0)
    assert torch.equal(pre.gather(1, i), v) and (i.sort(-1).values[:, 1:] > i.sort(-1).values[:, :-1]).all()
    plain_rows = torch.arange(B) == 1
    if B > 3: plain_rows[3:] = True
    assert torch.equal(i[plain_rows].sort(-1).values, ref.indices[plain_rows].sort(-1).values)


def test_threshold_topk_declines_nan_and_unsliceable_rows():
    "A NaN row (fewer than k entries >= t) and an S with no slicing into >= 2k slices give None (torch.topk then)."
    from sae_tutorial.fast import row_topk, threshold_topk
    pre = torch.randn(4, 96)
    pre[2, 7] = float("nan")
    assert threshold_topk(pre, 8) is None and threshold_topk(torch.randn(4, 97), 8) is None
    v, i = row_topk(pre, 8)                                             # falls back: NaN counts as largest, as in torch.topk
    assert torch.equal(i.sort(-1).values, pre.topk(8, dim=-1).indices.sort(-1).values)


def test_topk_groups_training_equals_plain(monkeypatch):
    "A TopK SAE with topk_groups set gives the plain path's outputs and gradients (float64)."
    from sae_tutorial.sae import TopKSAE
    monkeypatch.setattr(TopKSAE, "topk_groups", 4)
    plain, fast = _pair("topk", d_in=12, exp=8.0, k=5)
    x = torch.randn(20, 12, dtype=torch.float64)
    for sae in (plain, fast):
        out = sae(x); ((out.x_hat - x) ** 2).sum(-1).mean().backward()
    torch.testing.assert_close(fast(x).f, plain(x).f)
    for (n, a), (_, b) in zip(plain.named_parameters(), fast.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cut", [None, 0.0, 0.5, 1.5, 2.5, 10.0])
def test_batch_topk_flat_is_exact_for_any_cut(cut):
    """batch_topk_flat keeps the n_keep largest ReLU(pre) of the whole batch whatever the cut: through the candidates
    above it when enough are (cut 0.5, 1.5), by the full search when too few are (2.5, 10) or no cut is given."""
    from sae_tutorial.fast import batch_topk_flat
    g = torch.Generator().manual_seed(3)
    pre = torch.randn(16, 50, generator=g, dtype=torch.float64)
    n_keep = 40
    ref = torch.relu(pre).reshape(-1).topk(n_keep)
    if cut == 1.5: assert (pre > 1.5).sum() >= n_keep                   # the candidate branch ...
    if cut == 2.5: assert (pre > 2.5).sum() < n_keep                    # ... and the fall-back are both exercised
    vals, flat = batch_topk_flat(pre, n_keep, cut)
    assert torch.equal(flat.sort().values, ref.indices.sort().values)
    assert torch.equal(pre.reshape(-1)[flat], vals)


def test_batch_topk_flat_keeps_zeros_when_few_entries_fire():
    "Fewer positive entries than n_keep: the kept set is topped up with zeros, as torch.topk of ReLU(pre) does."
    from sae_tutorial.fast import batch_topk_flat
    pre = -torch.rand(4, 10, dtype=torch.float64); pre[0, :3] = torch.tensor([3.0, 2.0, 1.0])
    vals, flat = batch_topk_flat(pre, 5, cut=0.5)
    assert sorted(vals.tolist()) == [0.0, 0.0, 1.0, 2.0, 3.0] and {0, 1, 2} <= set(flat.tolist())


# --- a subclass's own maths runs: the fast path steps aside ----------------------------------------------------
def _subclass_cases():
    from sae_tutorial.sae import ReLUSAE, TiedReLUSAE, TopKSAE, BatchTopKSAE, JumpReLUSAE
    return [(ReLUSAE, dict()), (TiedReLUSAE, dict(tied=True)), (TopKSAE, dict(architecture="topk", k=3)),
            (BatchTopKSAE, dict(architecture="batchtopk", k=3)), (JumpReLUSAE, dict(architecture="jumprelu"))]


@pytest.mark.parametrize("case", range(5))
def test_subclass_overriding_pre_acts_runs_it_with_fast_on(case):
    """A subclass whose pre_acts is its own (here: no b_dec, and a scale of 2) gets that pre_acts in forward with
    cfg.fast=True, for every architecture with a fast path: its x_hat is the float64 formula with its pre."""
    base, kw = _subclass_cases()[case]
    calls = []
    class Own(base):
        def pre_acts(self, x):
            calls.append(1)
            return 2 * (x @ self.W_enc + self.b_enc)
    torch.manual_seed(case)
    sae = Own(SAEConfig(d_in=6, expansion_factor=2, **kw), dtype=torch.float64)
    with torch.no_grad(): sae.b_dec.copy_(torch.randn(6, dtype=torch.float64))
    assert sae.cfg.fast and not sae.fast_path_applies(base)
    x = torch.randn(5, 6, dtype=torch.float64)
    out = sae(x)
    assert calls, "forward did not call the subclass's pre_acts"
    pre = 2 * (x @ sae.W_enc + sae.b_enc)
    torch.testing.assert_close(out.pre, pre)
    torch.testing.assert_close(out.x_hat, sae.activation(pre) @ sae.W_dec + sae.b_dec)
    assert out.active is None                                       # the plain path: no pairs


@pytest.mark.parametrize("case", range(4))
def test_subclass_overriding_activation_runs_it_with_fast_on(case):
    """A subclass whose activation is its own (|pre|, so negative pre-activations count) gets it in forward with
    cfg.fast=True: f is that activation of the plain pre-activations (float64), and x_hat decodes that f."""
    base, kw = _subclass_cases()[case]
    class Own(base):
        def activation(self, pre): return pre.abs()
    torch.manual_seed(10 + case)
    sae = Own(SAEConfig(d_in=6, expansion_factor=2, **kw), dtype=torch.float64)
    assert sae.cfg.fast and not sae.fast_path_applies(base)
    x = torch.randn(5, 6, dtype=torch.float64)
    out = sae(x)
    f = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).abs()
    torch.testing.assert_close(out.f, f)
    torch.testing.assert_close(out.x_hat, f @ sae.W_dec + sae.b_dec)


def test_unchanged_subclass_keeps_the_fast_path():
    "A subclass that only adds something (no maths rewritten) still takes the fast path."
    from sae_tutorial.sae import TopKSAE
    class Named(TopKSAE):
        label = "mine"
    sae = Named(SAEConfig(d_in=6, expansion_factor=2, architecture="topk", k=3))
    assert sae.fast_path_applies(TopKSAE) and sae(torch.randn(4, 6)).active is not None


def test_patching_the_base_class_pre_acts_runs_it_with_fast_on(monkeypatch):
    """A learner who rewrites `SAE.pre_acts` itself (as the exercise notebooks do) gets it in forward with cfg.fast=True:
    the fast path compares against the maths each class had when it was defined, not against the patched class."""
    from sae_tutorial.sae import SAE, TopKSAE
    calls = []
    def own(self, x):
        calls.append(1)
        return 2 * (x @ self.W_enc + self.b_enc)
    monkeypatch.setattr(SAE, "pre_acts", own)
    torch.manual_seed(0)
    sae = TopKSAE(SAEConfig(d_in=6, expansion_factor=2, architecture="topk", k=3), dtype=torch.float64)
    assert sae.cfg.fast and not sae.fast_path_applies(TopKSAE)
    x = torch.randn(5, 6, dtype=torch.float64)
    out = sae(x)
    assert calls and out.active is None
    torch.testing.assert_close(out.pre, 2 * (x @ sae.W_enc + sae.b_enc))
