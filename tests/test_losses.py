"Loss functions (nbs/03_losses.ipynb): hand-worked numbers, float64/numpy references, gradients, bad inputs."
import math
import numpy as np
import pytest
import torch
from sae_tutorial.sae import SAEConfig, SAEOutput, make_sae
from sae_tutorial.losses import (reconstruction_loss, normalized_mse, l1_penalty, l1_wdec_penalty, smooth_l0_penalty,
                                 hoyer_penalty, tanh_penalty, jumprelu_l0_penalty, dead_penalty, diversity_penalty,
                                 auxk_loss, gated_aux_loss, LossConfig, LossOutput, sae_loss, sparsity_penalty,
                                 SPARSITY_PENALTIES, AUX_LOSSES)

F_HAND = torch.tensor([[0., 2., 0., 1.], [3., 0., 0., 4.]])
W_HAND = torch.tensor([[1., 0.], [0., 2.], [3., 4.], [1., 1.]])   # row norms 1, 2, 5, √2

def close(a, b, tol=1e-6):
    a, b = torch.as_tensor(a).detach(), torch.as_tensor(b).detach()
    assert abs(float(a) - float(b)) <= tol * max(1.0, abs(float(b))), (float(a), float(b))

# ---------------------------------------------------------------- reconstruction
def test_reconstruction_convention_by_hand():
    x = torch.tensor([[1., 2., 3.], [0., 0., 0.]]); x_hat = torch.tensor([[1., 0., 0.], [1., 1., 1.]])
    close(reconstruction_loss(x, x_hat), ((0 + 4 + 9) + (1 + 1 + 1)) / 2)          # = 8
    close(reconstruction_loss(x, x_hat), 3 * torch.nn.functional.mse_loss(x_hat, x))  # d_in × per-element mean
    with pytest.raises(ValueError, match=r"x has shape \(2, 3\) but x_hat has shape \(2, 2\)"):
        reconstruction_loss(x, x_hat[:, :2])

def test_normalized_mse_is_fvu():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)); x_hat = x + 0.3 * rng.normal(size=(50, 6))
    ref = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    close(normalized_mse(torch.tensor(x), torch.tensor(x_hat)), ref, 1e-12)
    close(normalized_mse(torch.tensor(x[None]), torch.tensor(x_hat[None])), ref, 1e-12)   # leading dims flatten

# ---------------------------------------------------------------- sparsity penalties by hand
def test_l1_and_l1_wdec_by_hand():
    close(l1_penalty(F_HAND), (3 + 7) / 2)
    # row 0: 2·2 + 1·√2; row 1: 3·1 + 4·√2
    close(l1_wdec_penalty(F_HAND, W_HAND), ((4 + math.sqrt(2)) + (3 + 4 * math.sqrt(2))) / 2)

def test_smooth_l0_by_hand_and_limits():
    s = lambda v: 1 / (1 + math.exp(-v))
    alpha, beta = 10.0, -1.0
    by_hand = sum((s(alpha * v + beta) - s(beta)) / (1 - s(beta)) for v in [0, 2, 0, 1]) + \
              sum((s(alpha * v + beta) - s(beta)) / (1 - s(beta)) for v in [3, 0, 0, 4])
    close(smooth_l0_penalty(F_HAND, alpha, beta), by_hand / 2)
    close(smooth_l0_penalty(torch.zeros(3, 5)), 0.0)
    close(smooth_l0_penalty(torch.tensor([[1e3, 0., 1e3]]), 20, -2), 2.0)   # counts active features

def test_hoyer_by_hand_and_zero_rows():
    # row 0: (2+1)/√5, row 1: (3+4)/5
    close(hoyer_penalty(F_HAND), (3 / math.sqrt(5) + 7 / 5) / 2)
    f = torch.tensor([[0., 0., 0.], [0., 1e-3, 0.]], requires_grad=True)
    close(hoyer_penalty(f), (0 + 1) / 2)
    hoyer_penalty(f).backward()
    assert torch.isfinite(f.grad).all() and f.grad.abs().max() == 0        # one active: scale-free, no push

def test_hoyer_is_scale_invariant():
    f = torch.rand(5, 8)
    close(hoyer_penalty(7.5 * f), hoyer_penalty(f), 1e-6)

def test_tanh_by_hand():
    close(tanh_penalty(F_HAND, scale=0.5), (math.tanh(1) + math.tanh(0.5) + math.tanh(1.5) + math.tanh(2)) / 2)

def test_jumprelu_l0_value_and_threshold_gradient():
    pre = torch.tensor([[0.3, 0.10004, -1.0], [0.2, 0.09998, 0.5]], dtype=torch.float64)
    theta = torch.tensor([0.25, 0.1, 0.4], dtype=torch.float64, requires_grad=True)
    l0 = jumprelu_l0_penalty(pre, theta, bandwidth=1e-3)
    close(l0, (2 + 1) / 2)                    # row 0: 0.3 > .25, 0.10004 > .1; row 1: 0.5 > .4
    l0.backward()
    # feature 1 has two pre-activations within ε/2 = 5e-4 of θ: -(1/ε)·2 / batch 2 = -1000
    np.testing.assert_allclose(theta.grad.numpy(), [0., -1000., 0.], atol=1e-9)

# ---------------------------------------------------------------- auxiliary losses
def test_dead_penalty_by_hand():
    close(dead_penalty(W_HAND, torch.tensor([False, True, True, False])), 4 + 25)
    close(dead_penalty(W_HAND, torch.zeros(4, dtype=torch.bool)), 0.0)

@pytest.mark.parametrize("chunk", [1, 3, 4, 100])
def test_diversity_by_hand_any_chunk(chunk):
    # dots: (0,1)=0 (0,2)=3 (0,3)=1 (1,2)=8 (1,3)=2 (2,3)=7 -> sum 21, each pair twice
    close(diversity_penalty(W_HAND, chunk=chunk), 42)

def test_diversity_gradcheck_float64():
    torch.manual_seed(0)
    W = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda W: diversity_penalty(W, chunk=3), (W,), eps=1e-6, atol=1e-7)

def test_diversity_gradient_matches_naive_autograd():
    torch.manual_seed(1)
    W = torch.randn(20, 5, dtype=torch.float64, requires_grad=True)
    diversity_penalty(W, chunk=6).backward(); ours = W.grad.clone(); W.grad = None
    G = W @ W.T; (G.abs().sum() - G.diagonal().abs().sum()).backward()
    torch.testing.assert_close(ours, W.grad)

def test_diversity_keeps_no_gram_block_for_backward():
    "Autograd keeps only W_dec (d_sae×d_in) for the backward pass, never a d_sae×d_sae block."
    W = torch.randn(64, 4, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        diversity_penalty(W, chunk=8)
    assert max(saved) == 64 * 4
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        G = W @ W.T; G.abs().sum()
    assert max(saved) == 64 * 64                 # the naive version keeps the whole Gram matrix

def test_auxk_against_numpy():
    rng = np.random.default_rng(2)
    B, d_in, d_sae, k_aux = 5, 4, 10, 3
    x, x_hat = rng.normal(size=(B, d_in)), rng.normal(size=(B, d_in))
    pre, W = rng.normal(size=(B, d_sae)), rng.normal(size=(d_sae, d_in))
    dead = np.zeros(d_sae, bool); dead[[1, 4, 5, 7, 9]] = True
    e = x - x_hat
    f_aux = np.zeros((B, d_sae))
    for b in range(B):
        cand = np.where(dead)[0]
        top = cand[np.argsort(-pre[b, cand])[:k_aux]]
        f_aux[b, top] = np.maximum(pre[b, top], 0)
    ref = ((e - f_aux @ W) ** 2).sum(1).mean()
    t = lambda a: torch.tensor(a)
    out = SAEOutput(t(x_hat), t(np.zeros((B, d_sae))), t(pre))
    close(auxk_loss(t(x), out, t(W), t(dead), k_aux), ref, 1e-12)
    # k_aux larger than the number of dead latents uses them all
    f_all = np.where(dead, np.maximum(pre, 0), 0)
    close(auxk_loss(t(x), out, t(W), t(dead), 100), ((e - f_all @ W) ** 2).sum(1).mean(), 1e-12)

def test_auxk_gradient_skips_main_reconstruction():
    sae = make_sae(SAEConfig(d_in=8, expansion_factor=4, architecture="topk", k=2))
    x = torch.randn(16, 8)
    out = sae(x)
    dead = torch.zeros(32, dtype=torch.bool); dead[5:20] = True
    x_hat_leaf = out.x_hat.detach().requires_grad_()
    auxk_loss(x, out._replace(x_hat=x_hat_leaf), sae.W_dec, dead, 4).backward()
    assert x_hat_leaf.grad is None                       # e = x - x_hat is a constant target
    assert sae.W_dec.grad[dead].abs().sum() > 0 and sae.W_dec.grad[~dead].abs().sum() == 0

def test_gated_aux_by_hand_and_frozen_decoder():
    sae = make_sae(SAEConfig(d_in=2, expansion_factor=1.5, architecture="gated"))
    with torch.no_grad():
        sae.W_dec.copy_(torch.tensor([[1., 0.], [0., 1.], [1., 1.]])); sae.b_dec.copy_(torch.tensor([0.5, 0.]))
    pre = torch.tensor([[1., -2., 2.]], requires_grad=True)          # ReLU -> (1, 0, 2) -> (3, 2) + b_dec = (3.5, 2)
    out = SAEOutput(torch.zeros(1, 2), torch.zeros(1, 3), pre)
    a = gated_aux_loss(torch.tensor([[3., 3.]]), out, sae.W_dec, sae.b_dec)
    close(a, 0.25 + 1)
    a.backward()
    assert sae.W_dec.grad is None and sae.b_dec.grad is None
    # d/dpre = -2·(x - x̂)·W_decᵀ on active entries: (x - x̂) = (-0.5, 1) -> rows (1,0):1, (1,1):-1
    torch.testing.assert_close(pre.grad, torch.tensor([[-2 * -0.5, 0., -2 * 0.5]]))

# ---------------------------------------------------------------- sae_loss
@pytest.mark.parametrize("arch,sp,ax", [("relu", s, a) for s in ["l1", "l1_wdec", "smooth_l0", "hoyer", "tanh", "none"]
                                        for a in ["none", "dead", "diversity", "auxk"]]
                         + [("jumprelu", "jumprelu_l0", "none"), ("gated", "l1", "gated"), ("topk", "none", "auxk"),
                            ("batchtopk", "none", "auxk")])
def test_sae_loss_total_is_the_weighted_sum(arch, sp, ax):
    torch.manual_seed(3)
    sae = make_sae(SAEConfig(d_in=8, expansion_factor=4, architecture=arch, k=4))
    x = torch.randn(16, 8); out = sae(x)
    dead = torch.zeros(32, dtype=torch.bool); dead[::3] = True
    cfg = LossConfig(sparsity=sp, aux=ax, sparsity_coeff=0.3, aux_coeff=0.7)
    lo = sae_loss(sae, x, out, cfg, dead_mask=dead)
    assert isinstance(lo, LossOutput) and all(v.dim() == 0 for v in lo)
    close(lo.recon, ((x - out.x_hat) ** 2).sum(1).mean())
    close(lo.total, lo.recon + 0.3 * lo.sparsity + 0.7 * lo.aux, 1e-5)
    lo2 = sae_loss(sae, x, out, cfg, sparsity_coeff=0.0, dead_mask=dead)
    close(lo2.total, lo.recon + 0.7 * lo.aux, 1e-5)
    lo.total.backward()
    assert all(torch.isfinite(p.grad).all() for p in sae.parameters() if p.grad is not None)

def test_gated_sparsity_acts_on_the_gate():
    sae = make_sae(SAEConfig(d_in=8, expansion_factor=4, architecture="gated"))
    x = torch.randn(16, 8); out = sae(x)
    close(sparsity_penalty(sae, out, LossConfig(sparsity="l1")), torch.relu(out.pre).sum(1).mean())

def test_jumprelu_loss_trains_log_threshold():
    sae = make_sae(SAEConfig(d_in=8, expansion_factor=4, architecture="jumprelu", jumprelu_bandwidth=0.05))
    x = torch.randn(64, 8); out = sae(x)
    sae_loss(sae, x, out, LossConfig(sparsity="jumprelu_l0", sparsity_coeff=1.0)).sparsity.backward()
    assert sae.log_threshold.grad is not None and (sae.log_threshold.grad < 0).any()   # raising θ lowers L0

@pytest.mark.parametrize("cfg,msg", [(LossConfig(aux="auxk"), "needs dead_mask"), (LossConfig(aux="dead"), "needs dead_mask"),
                                     (LossConfig(sparsity="jumprelu_l0"), "needs a JumpReLU SAE"),
                                     (LossConfig(aux="gated"), "needs a Gated SAE")])
def test_sae_loss_refuses_wrong_combinations(cfg, msg):
    sae = make_sae(SAEConfig(d_in=8, expansion_factor=4))
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match=msg): sae_loss(sae, x, sae(x), cfg)

def test_bad_dead_mask_and_config():
    sae = make_sae(SAEConfig(d_in=8, expansion_factor=4)); x = torch.randn(4, 8)
    with pytest.raises(ValueError, match=r"bool tensor of shape \(32,\)"):
        sae_loss(sae, x, sae(x), LossConfig(aux="dead"), dead_mask=torch.zeros(31, dtype=torch.bool))
    with pytest.raises(ValueError, match="sparsity='l2' is unknown"): LossConfig(sparsity="l2")
    with pytest.raises(ValueError, match="aux='x' is unknown"): LossConfig(aux="x")
    with pytest.raises(ValueError, match=">= 0"): LossConfig(sparsity_coeff=-1)
    assert set(SPARSITY_PENALTIES) >= {"l1", "l1_wdec", "smooth_l0", "hoyer", "tanh", "jumprelu_l0", "none"}
    assert set(AUX_LOSSES) >= {"none", "auxk", "gated", "dead", "diversity"}


def test_auxk_loss_equals_the_masked_dense_formula_with_gradients():
    "auxk_loss works on the dead columns only; it must equal the whole-width masked formula, value and gradients, in float64."
    import torch.nn.functional as F
    from sae_tutorial.losses import auxk_loss
    from sae_tutorial.sae import SAEOutput
    g = torch.Generator().manual_seed(0)
    B, d_sae, d_in = 16, 40, 8
    for n_dead, k_aux in ((7, 3), (7, 7), (7, 20), (40, 5), (0, 4)):
        x = torch.randn(B, d_in, generator=g, dtype=torch.float64)
        x_hat = torch.randn(B, d_in, generator=g, dtype=torch.float64)
        dead = torch.zeros(d_sae, dtype=torch.bool); dead[torch.randperm(d_sae, generator=g)[:n_dead]] = True
        outs = []
        for fast in (True, False):
            pre = torch.randn(B, d_sae, generator=torch.Generator().manual_seed(n_dead), dtype=torch.float64).requires_grad_()
            W = torch.randn(d_sae, d_in, generator=torch.Generator().manual_seed(k_aux), dtype=torch.float64).requires_grad_()
            out = SAEOutput(x_hat, torch.zeros(B, d_sae, dtype=torch.float64), pre)
            if fast: loss = auxk_loss(x, out, W, dead, k_aux)
            elif n_dead == 0: loss = pre.sum() * 0
            else:
                masked = pre.masked_fill(~dead, float("-inf"))
                vals, idx = masked.topk(min(k_aux, n_dead), dim=-1)
                f_aux = torch.zeros_like(pre).scatter(-1, idx, F.relu(vals))
                loss = ((x - x_hat) - f_aux @ W).pow(2).sum(-1).mean()
            if loss.requires_grad: loss.backward()
            outs.append((loss.detach(), pre.grad, W.grad))
        (l1, gp1, gw1), (l2, gp2, gw2) = outs
        assert torch.allclose(l1, l2, rtol=1e-12, atol=1e-12), (n_dead, k_aux)
        if n_dead:
            assert torch.allclose(gp1, gp2, rtol=1e-10, atol=1e-12) and torch.allclose(gw1, gw2, rtol=1e-10, atol=1e-12)
