"""SAEConfig(fast=True) (default) gives the same outputs and gradients as fast=False (the plain autograd path)."""
import pytest
import torch

from sae_tutorial.losses import LossConfig, sae_loss
from sae_tutorial.sae import SAEConfig, make_sae

LOSSES = {"recon": LossConfig(sparsity="none"), "l1": LossConfig(sparsity="l1", sparsity_coeff=0.3),
          "l1_wdec": LossConfig(sparsity="l1_wdec", sparsity_coeff=0.3)}


def _run(sae, x, lcfg, use_pre):
    sae.zero_grad(set_to_none=True)
    out = sae(x)
    loss = sae_loss(sae, x, out, lcfg).total + (0.1 * out.pre.pow(2).sum() if use_pre else 0)
    loss.backward()
    return out, {n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch,tied", [("relu", False), ("relu", True), ("topk", False), ("batchtopk", False),
                                       ("jumprelu", False), ("gated", False)])
@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("use_pre", [False, True])
def test_fast_equals_plain(arch, tied, loss, use_pre):
    torch.manual_seed(0)
    plain = make_sae(SAEConfig(d_in=12, expansion_factor=4, architecture=arch, k=5, tied=tied, fast=False), dtype=torch.float64)
    with torch.no_grad():
        plain.b_enc.normal_(0, 0.1); plain.b_dec.normal_(0, 0.3)
        plain.W_dec.mul_(torch.rand(plain.W_dec.shape[0], 1, dtype=torch.float64) + 0.5)
    fast = make_sae(SAEConfig(d_in=12, expansion_factor=4, architecture=arch, k=5, tied=tied, fast=True), dtype=torch.float64)
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(3, 11, 12, dtype=torch.float64)
    o1, g1 = _run(plain, x, LOSSES[loss], use_pre)
    o2, g2 = _run(fast, x, LOSSES[loss], use_pre)
    for a, b in zip(o1, o2):
        if a is not None: torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
    assert set(g1) == set(g2)
    for n in g1: torch.testing.assert_close(g2[n], g1[n], rtol=1e-9, atol=1e-12, msg=lambda m: f"grad {n}: {m}")
