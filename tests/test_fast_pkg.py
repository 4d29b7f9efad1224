"""SAEConfig(fast=True) (the default) gives the same outputs and gradients as fast=False (the plain autograd path).

Reference: the plain path of sae_tutorial.sae / sae_tutorial.losses (dense matmuls, autograd) in float64, for every
architecture, with and without a loss term on `pre`. Run: python -m pytest -q tests/test_fast_pkg.py
"""
import json

import pytest
import torch

from sae_tutorial.losses import LossConfig, sae_loss
from sae_tutorial.sae import SAE, SAEConfig, make_sae


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)   # tiny tensors: one thread is fastest
    yield
    torch.set_num_threads(n)


LOSSES = {"recon": LossConfig(sparsity="none"), "l1": LossConfig(sparsity="l1", sparsity_coeff=0.3),
          "l1_wdec": LossConfig(sparsity="l1_wdec", sparsity_coeff=0.3)}


def _run(sae, x, lcfg, use_pre):
    sae.zero_grad(set_to_none=True)
    out = sae(x)
    loss = sae_loss(sae, x, out, lcfg).total + (0.1 * out.pre.pow(2).sum() if use_pre else 0)
    loss.backward()
    return out, {n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None}


def _assert_same(plain, fast, x, lcfg, use_pre):
    "Every output and every parameter's gradient of `fast` equals `plain`'s (float64, rtol 1e-9)."
    o1, g1 = _run(plain, x, lcfg, use_pre)
    o2, g2 = _run(fast, x, lcfg, use_pre)
    for a, b in zip(o1, o2):
        if a is not None: torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
    assert set(g1) == set(g2) and g1
    for n in g1: torch.testing.assert_close(g2[n], g1[n], rtol=1e-9, atol=1e-12, msg=lambda m: f"grad {n}: {m}")


def _pair(arch, tied=False, d_in=12, exp=4, k=5):
    torch.manual_seed(0)
    plain = make_sae(SAEConfig(d_in=d_in, expansion_factor=exp, architecture=arch, k=k, tied=tied, fast=False),
                     dtype=torch.float64)
    with torch.no_grad():  # non-trivial biases and decoder norms so every term of every gradient is exercised
        plain.b_enc.normal_(0, 0.1); plain.b_dec.normal_(0, 0.3)
        plain.W_dec.mul_(torch.rand(plain.W_dec.shape[0], 1, dtype=torch.float64) + 0.5)
    fast = make_sae(SAEConfig(d_in=d_in, expansion_factor=exp, architecture=arch, k=k, tied=tied, fast=True),
                    dtype=torch.float64)
    fast.load_state_dict(plain.state_dict())
    return plain, fast


@pytest.mark.parametrize("arch,tied", [("relu", False), ("relu", True), ("topk", False), ("batchtopk", False),
                                       ("jumprelu", False), ("gated", False)])
@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("use_pre", [False, True])
def test_fast_equals_plain(arch, tied, loss, use_pre):
    plain, fast = _pair(arch, tied)
    x = torch.randn(3, 11, 12, dtype=torch.float64)
    _assert_same(plain, fast, x, LOSSES[loss], use_pre)


def _graph(t):
    "Names of every autograd node behind tensor t."
    seen, todo = set(), [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen: continue
        seen.add(node); todo += [n for n, _ in node.next_functions]
    return " ".join(type(n).__name__ for n in seen)


def test_fast_path_is_used():
    "The two paths are different code (else the test above could not fail): their autograd graphs differ."
    x = torch.randn(4, 12, dtype=torch.float64)
    plain, fast = _pair("topk")
    assert "TopKSparse" in _graph(fast(x).x_hat) and "TopKSparse" not in _graph(plain(x).x_hat)
    plain, fast = _pair("relu")
    assert "ReLUSparse" in _graph(fast(x).x_hat) and "ReLUSparse" not in _graph(plain(x).x_hat)
    plain, fast = _pair("batchtopk")                          # training mode: the kept pairs
    assert "BatchTopKSparse" in _graph(fast(x).x_hat) and "BatchTopKSparse" not in _graph(plain(x).x_hat)
    plain, fast = _pair("jumprelu")
    assert "EncodeCentered" in _graph(fast(x).x_hat) and "EncodeCentered" not in _graph(plain(x).x_hat)
    plain, fast = _pair("batchtopk"); plain.threshold.fill_(0.1); fast.threshold.fill_(0.1)
    fast.eval()                                              # eval: the threshold rule, on EncodeCentered's pre
    assert "EncodeCentered" in _graph(fast(x).x_hat) and "BatchTopKSparse" not in _graph(fast(x).x_hat)


def test_one_row_input():
    "x of shape [d_in] (no batch dimension) gives the same as the plain path."
    for arch in ("relu", "topk"):
        plain, fast = _pair(arch)
        x = torch.randn(12, dtype=torch.float64)
        for a, b in zip(plain(x), fast(x)):
            if a is not None: assert b.shape == a.shape; torch.testing.assert_close(b, a)


def test_save_load_keeps_fast_and_reads_old_cfg(tmp_path):
    "cfg.json stores `fast`; a cfg.json written before `fast` existed loads with the default (True)."
    _, fast = _pair("topk")
    fast.cfg.fast = False
    fast.save(tmp_path/"a")
    d = json.loads((tmp_path/"a"/"cfg.json").read_text())
    assert d["fast"] is False
    assert SAE.load(tmp_path/"a").cfg.fast is False
    del d["fast"]
    (tmp_path/"a"/"cfg.json").write_text(json.dumps(d))
    back = SAE.load(tmp_path/"a")
    assert back.cfg.fast is True
    x = torch.randn(5, 12, dtype=torch.float64)
    torch.testing.assert_close(back(x).x_hat, fast(x).x_hat, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("density", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("use_pre", [False, True])
def test_relu_sparse_branch_equals_plain(monkeypatch, tied, density, loss, use_pre):
    """ReLUSparse in both branches: density 0 forces the dense branch, 0.5 and 1.0 the sparse one. b_enc is shifted
    down so that rows fire different, small numbers of latents."""
    from sae_tutorial.sae import ReLUSAE
    monkeypatch.setattr(ReLUSAE, "sparse_max_density", density)
    plain, fast = _pair("relu", tied)
    for s in (plain, fast):
        with torch.no_grad(): s.b_enc.sub_(0.6)
    x = torch.randn(3, 11, 12, dtype=torch.float64)
    fired = (plain(x).f > 0).sum(-1)
    assert 0 < fired.max() < plain.cfg.d_sae and fired.min() < fired.max()   # rows fire different numbers of latents
    _assert_same(plain, fast, x, LOSSES[loss], use_pre)


def test_relu_sparse_branch_is_chosen_by_density(monkeypatch):
    "The switch: f's non-zeros as pairs at or below the density limit, the dense f (rows/cols empty) above it."
    from sae_tutorial.sae import ReLUSAE
    from sae_tutorial.fast import ReLUSparse
    _, fast = _pair("relu")
    x = torch.randn(20, 12, dtype=torch.float64)
    f = fast(x).f
    n, total = int((f > 0).sum()), f.numel()
    args = (x, fast.W_enc, fast.b_enc, fast.W_dec, fast.b_dec)
    x_hat, vals, rows, cols, _, _ = ReLUSparse.apply(*args, (n + 0.5) / total)
    assert vals.shape == rows.shape == cols.shape == (n,)
    torch.testing.assert_close(vals, f[rows, cols]); assert (vals > 0).all()
    assert ReLUSparse.apply(*args, (n - 0.5) / total)[1].shape == f.shape
    monkeypatch.setattr(ReLUSAE, "sparse_max_density", 1.0)
    assert "ReLUSparse" in _graph(fast(x).x_hat)


def test_relu_sparse_when_nothing_fires(monkeypatch):
    "No latent fires in any row: the sparse branch has no pairs, x_hat = b_dec, and the gradients match the plain path."
    from sae_tutorial.sae import ReLUSAE
    monkeypatch.setattr(ReLUSAE, "sparse_max_density", 1.0)
    plain, fast = _pair("relu")
    for s in (plain, fast):
        with torch.no_grad(): s.b_enc.fill_(-1e3)
    x = torch.randn(5, 12, dtype=torch.float64)
    _assert_same(plain, fast, x, LOSSES["l1"], False)
    torch.testing.assert_close(fast(x).x_hat, fast.b_dec.expand(5, 12))


@pytest.mark.parametrize("piece", [0, 1, 3, 64])
def test_by_feature_pieces_sum_the_same(piece):
    """_ByFeature.sum_rows, whole bags or cut into pieces (the GPU layout), against a float64 loop over the pairs;
    one latent fires in every row (the unbalanced case the pieces are for) and some never fire."""
    from sae_tutorial.fast import _ByFeature
    g = torch.Generator().manual_seed(0)
    B, k, d_sae, d = 40, 4, 30, 6
    idx = torch.stack([torch.randperm(d_sae - 5, generator=g)[:k] for _ in range(B)])
    idx[:, 0] = 7                                                  # latent 7 in every row; 25..29 never
    idx[:, 1:][idx[:, 1:] == 7] = 8
    src = torch.randn(B, d, dtype=torch.float64, generator=g)
    w = torch.randn(B, k, dtype=torch.float64, generator=g)
    ref = torch.zeros(d_sae, d, dtype=torch.float64)
    for b in range(B):
        for j in range(k): ref[idx[b, j]] += w[b, j] * src[b]
    rows = torch.arange(B).repeat_interleave(k)
    out = _ByFeature(rows, idx.reshape(-1), d_sae, piece=piece).sum_rows(src, w.reshape(-1))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("piece", [0, 4])
def test_by_feature_no_pairs(piece):
    "No active pairs at all (nothing fired): every latent's sum is zero, whole bags or pieces."
    from sae_tutorial.fast import _ByFeature
    none = torch.zeros(0, dtype=torch.long)
    out = _ByFeature(none, none, 5, piece=piece).sum_rows(torch.randn(3, 2, dtype=torch.float64), torch.zeros(0, dtype=torch.float64))
    assert torch.equal(out, torch.zeros(5, 2, dtype=torch.float64))


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu"])
def test_gpu_layout_of_the_sums_equals_plain(arch, monkeypatch):
    """The GPU's way of summing per latent (bags cut into pieces, sized without asking the device) run on the CPU
    with tiny pieces inside whole training steps: the same outputs and gradients as the plain path."""
    from sae_tutorial import sae as sae_mod, fast as fast_mod
    init = fast_mod._ByFeature.__init__
    monkeypatch.setattr(fast_mod._ByFeature, "__init__", lambda self, rows, cols, d_sae, piece=None: init(self, rows, cols, d_sae, 3))
    monkeypatch.setattr(sae_mod.ReLUSAE, "sparse_max_density", 1.0)          # ReLU on its sparse branch
    plain, fast = _pair(arch)
    x = torch.randn(40, 12, dtype=torch.float64)
    x[:, 0] += 4.0                                                            # one direction every row shares
    _assert_same(plain, fast, x, LOSSES["l1" if arch == "relu" else "recon"], True)


@pytest.mark.parametrize("arch,tied", [("topk", False), ("batchtopk", False), ("relu", False), ("relu", True)])
@pytest.mark.parametrize("n_dead,k_aux", [(7, 3), (7, 20), (0, 3)])
@pytest.mark.parametrize("use_pre", [False, True])
def test_auxk_over_dead_columns_equals_plain(arch, tied, n_dead, k_aux, use_pre):
    """AuxK on the fast forward (`dead_columns`: the dead latents' pre-activations, their gradient straight to the
    encoder's dead columns) against the plain path's autograd through the whole dense pre, in float64; k_aux below
    and above the number of dead latents, and no dead latent at all."""
    plain, fast = _pair(arch, tied)
    dead = torch.zeros(plain.cfg.d_sae, dtype=torch.bool)
    dead[torch.randperm(plain.cfg.d_sae, generator=torch.Generator().manual_seed(1))[:n_dead]] = True
    x = torch.randn(3, 11, 12, dtype=torch.float64)
    lcfg = LossConfig(sparsity="l1", sparsity_coeff=0.3, aux="auxk", aux_coeff=0.5, k_aux=k_aux)
    grads, losses = [], []
    for sae in (plain, fast):
        sae.zero_grad(set_to_none=True)
        out = sae(x)
        lo = sae_loss(sae, x, out, lcfg, dead_mask=dead)
        (lo.total + (0.1 * out.pre.pow(2).sum() if use_pre else 0)).backward()
        grads.append({n: p.grad.clone() for n, p in sae.named_parameters()}); losses.append(lo)
    assert (losses[0].aux > 0) == (n_dead > 0)
    for a, b in zip(losses[0], losses[1]): torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
    for n in grads[0]: torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-9, atol=1e-12, msg=lambda m: f"grad {n}: {m}")


def test_auxk_fast_path_skips_the_dense_pre_gradient():
    "The fast AuxK's graph reaches the encoder through DeadColumns, and no gradient reaches TopKSparse's pre."
    _, fast = _pair("topk")
    dead = torch.zeros(fast.cfg.d_sae, dtype=torch.bool); dead[:9] = True
    x = torch.randn(4, 12, dtype=torch.float64)
    aux = sae_loss(fast, x, fast(x), LossConfig(sparsity="none", aux="auxk", k_aux=4), dead_mask=dead).aux
    assert "DeadColumns" in _graph(aux) and "TopKSparse" not in _graph(aux)
