"""The fast paths in benchmarks/fast_paths.py give the plain path's outputs and gradients.

Reference: the plain `sae(x)` of sae_tutorial.sae (autograd through dense matmuls) in float64, and for the
TopK decode an independent loop over rows. Run: python -m pytest -q tests/test_fast_paths.py
"""
import importlib.util
from pathlib import Path

import pytest
import torch

from sae_tutorial.losses import LossConfig, sae_loss
from sae_tutorial.sae import SAEConfig, make_sae

_spec = importlib.util.spec_from_file_location("fast_paths", Path(__file__).resolve().parents[1] / "benchmarks" / "fast_paths.py")
fp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fp)


def _pair(arch, variant="fast", d_in=12, exp=4.0, k=5, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = SAEConfig(d_in=d_in, expansion_factor=exp, architecture=arch, k=k, **kw)
    plain = make_sae(cfg, dtype=torch.float64)
    with torch.no_grad():  # non-trivial biases so every term of the gradient is exercised
        plain.b_enc.normal_(0, 0.1); plain.b_dec.normal_(0, 0.3)
    fast = make_sae(SAEConfig(**{**cfg.__dict__}), dtype=torch.float64)
    fast.load_state_dict(plain.state_dict())
    return plain, fp.apply(fast, variant)


def _grads(sae, x, loss_fn):
    sae.zero_grad(set_to_none=True)
    out = sae(x)
    loss_fn(sae, x, out).backward()
    return out, {n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in sae.named_parameters()}


LOSSES = {
    "recon": lambda s, x, o: sae_loss(s, x, o, LossConfig(sparsity="none")).total,
    "recon+l1": lambda s, x, o: sae_loss(s, x, o, LossConfig(sparsity="l1", sparsity_coeff=0.3)).total,
    "recon+l1_wdec": lambda s, x, o: sae_loss(s, x, o, LossConfig(sparsity="l1_wdec", sparsity_coeff=0.3)).total,
    "uses_pre": lambda s, x, o: (o.x_hat - x).pow(2).sum() + 0.1 * o.pre.pow(2).sum() + 0.2 * o.f.sum(),
}


@pytest.mark.parametrize("arch", ["relu", "topk"])
@pytest.mark.parametrize("loss", list(LOSSES))
def test_fast_equals_plain(arch, loss):
    plain, fast = _pair(arch)
    x = torch.randn(33, 12, dtype=torch.float64)
    o1, g1 = _grads(plain, x, LOSSES[loss])
    o2, g2 = _grads(fast, x, LOSSES[loss])
    for a, b in zip(o1, o2):
        if a is not None: torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    assert set(g1) == set(g2)
    for n in g1:
        torch.testing.assert_close(g2[n], g1[n], rtol=1e-9, atol=1e-12, msg=lambda m: f"grad {n}: {m}")


def test_topk_fast_leading_dims_and_float32():
    plain, fast = _pair("topk", d_in=16, exp=8.0, k=3)
    plain, fast = plain.float(), fast.float()
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(fast(x).x_hat, plain(x).x_hat, rtol=1e-5, atol=1e-5)
    assert fast(x).f.shape == (2, 7, 128)


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


def test_training_steps_match():
    "Five Adam steps with decoder renormalisation give the same weights on both paths."
    plain, fast = _pair("topk", d_in=16, exp=4.0, k=4)
    x = torch.randn(64, 16, dtype=torch.float64)
    for sae in (plain, fast):
        opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
        for _ in range(5):
            loss = LOSSES["recon"](sae, x, sae(x))
            opt.zero_grad(); loss.backward(); sae.remove_parallel_grad_(); opt.step(); sae.normalize_decoder_()
    for (n, a), (_, b) in zip(plain.named_parameters(), fast.named_parameters()):
        torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-10, msg=lambda m: f"{n}: {m}")


def test_unknown_variant():
    plain, _ = _pair("relu")
    with pytest.raises(ValueError, match="unknown variant"):
        fp.apply(plain, "turbo")


@pytest.mark.parametrize("arch", ["relu", "topk"])
def test_nonneg_l1_penalties_match(arch):
    "Same values and same parameter gradients as losses.l1_penalty / l1_wdec_penalty on f >= 0 from ReLU / TopK."
    from sae_tutorial.losses import l1_penalty, l1_wdec_penalty
    plain, _ = _pair(arch, variant="plain")
    with torch.no_grad(): plain.W_dec.mul_(torch.rand(plain.W_dec.shape[0], 1, dtype=torch.float64) + 0.5)  # non-unit norms
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    for ref, new in [(lambda s, o: l1_penalty(o.f), lambda s, o: fp.l1_nonneg(o.f)),
                     (lambda s, o: l1_wdec_penalty(o.f, s.W_dec), lambda s, o: fp.l1_wdec_nonneg(o.f, s.W_dec))]:
        _, g1 = _grads(plain, x, lambda s, xx, o: ref(s, o))
        _, g2 = _grads(plain, x, lambda s, xx, o: new(s, o))
        torch.testing.assert_close(new(plain, plain(x)), ref(plain, plain(x)))
        for n in g1: torch.testing.assert_close(g2[n], g1[n], rtol=1e-9, atol=1e-12)
    assert (plain(x).f >= 0).all()


def test_usage_update_int32_matches():
    "The int32-count FeatureUsage.update keeps the same statistics as the package's update (window of 2 batches)."
    from sae_tutorial.train import FeatureUsage
    torch.manual_seed(0)
    fs = [torch.relu(torch.randn(7, 20) - 1.0) for _ in range(5)]
    a, b = FeatureUsage(20, window=14), FeatureUsage(20, window=14)
    for f in fs:
        a.update(f); fp._usage_update_int32(b, f)
        assert torch.equal(a.counts, b.counts) and torch.equal(a.last_fired, b.last_fired)
        assert a.counts.dtype == b.counts.dtype == torch.long
    assert torch.equal(a.counts, sum((f > 0).long().sum(0) for f in fs[-2:]))   # hand count over the window
