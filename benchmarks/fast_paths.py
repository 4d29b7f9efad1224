"""Candidate fast paths for sae_tutorial's SAE forward/backward, measured by train_throughput.py.

They compute exactly what the plain path computes (same SAEOutput, same gradients; checked by
tests/test_fast_paths.py against the plain path in float64) with less work:

- `encode_centered(x, W_enc, b_enc, b_dec)`: pre = (x - b_dec) @ W_enc + b_enc in one addmm, and a
  backward that gets b_dec's gradient from a matrix-vector product, -(W_enc @ Σ_b dL/dpre[b]),
  instead of autograd's full dL/dx_c = dL/dpre @ W_enc.T ([batch, d_sae] × [d_sae, d_in]) followed
  by a sum. That removes one of the six dense matmuls of a step.
- `topk_sparse_forward(sae, x)`: TopK SAE whose decoder and whole backward only touch the k active
  latents per row: x_hat by `embedding_bag` (gather k decoder rows, weighted sum), dL/dvals by
  `torch.sparse.sampled_addmm` (g · W_dec[i] only at the active (row, i)), dL/dW_dec and dL/dW_enc by
  COO sparse × dense products. Dense work left: the encoder matmul (needed for the top-k choice).
  Gradients through `f` and `pre` still flow (dense, only if a loss uses them, e.g. AuxK on `pre`).

`apply(sae, variant)` switches an SAE built by `sae_tutorial.sae.make_sae` to a variant in place
(used by the benchmark); it is a stand-in for the proposed `SAEConfig(fast=True)` switch.
"""
from __future__ import annotations

import types
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


class EncodeCentered(torch.autograd.Function):
    "pre = (x - b_dec) @ W_enc + b_enc; b_dec's gradient by a matvec instead of a [B, d_sae] @ [d_sae, d_in] matmul."

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor) -> Tensor:
        xc = x - b_dec
        ctx.save_for_backward(xc, W_enc)
        return torch.addmm(b_enc, xc, W_enc)

    @staticmethod
    def backward(ctx, g: Tensor):
        xc, W_enc = ctx.saved_tensors
        need_x, need_W, need_be, need_bd = ctx.needs_input_grad
        gs = g.sum(0)
        gx = g @ W_enc.T if need_x else None
        gW = xc.T @ g if need_W else None
        gbd = -(W_enc @ gs) if need_bd else None
        return gx, gW, gs if need_be else None, gbd


def encode_centered(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor) -> Tensor:
    "(x - b_dec) @ W_enc + b_enc for x [B, d_in] -> [B, d_sae], with the cheaper backward."
    return EncodeCentered.apply(x, W_enc, b_enc, b_dec)


class _ByFeature:
    "The active (row, latent) pairs [B, k] grouped by latent, to sum row vectors per latent with embedding_bag."

    def __init__(self, idx: Tensor, d_sae: int):
        flat = idx.reshape(-1)
        self.order = torch.argsort(flat)
        counts = torch.bincount(flat, minlength=d_sae)
        self.offsets = torch.cumsum(counts, 0) - counts                    # start of each latent's bag
        self.rows = torch.div(self.order, idx.shape[1], rounding_mode="floor")  # batch row of each sorted pair

    def sum_rows(self, src: Tensor, weights: Tensor) -> Tensor:
        "out[i] = Σ_{(b,j): idx[b,j] = i} weights[b,j] · src[b]   -> [d_sae, src.shape[1]]"
        return F.embedding_bag(self.rows, src, self.offsets, mode="sum",
                               per_sample_weights=weights.reshape(-1)[self.order])


class TopKSparse(torch.autograd.Function):
    "(x_hat, vals, idx, pre) of a TopK SAE; forward decode and backward touch only the k active latents per row."

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, W_dec, b_dec, k: int):
        xc = x - b_dec
        pre = torch.addmm(b_enc, xc, W_enc)                       # [B, d_sae]  the one dense matmul
        top, idx = pre.topk(k, dim=-1, sorted=False)              # [B, k]
        vals = top.relu_()
        x_hat = F.embedding_bag(idx, W_dec, per_sample_weights=vals, mode="sum").add_(b_dec)  # [B, d_in]
        ctx.mark_non_differentiable(idx)
        ctx.set_materialize_grads(False)       # unused outputs (f, pre) give None, not dense zeros
        ctx.save_for_backward(xc, W_enc, W_dec, vals, idx)
        return x_hat, vals, idx, pre

    @staticmethod
    def backward(ctx, g_xhat, g_vals, _g_idx, g_pre):
        xc, W_enc, W_dec, vals, idx = ctx.saved_tensors
        need_x, need_We, need_be, need_Wd, need_bd, _ = ctx.needs_input_grad
        B, k = idx.shape
        d_sae = W_dec.shape[0]
        gv = torch.zeros_like(vals) if g_vals is None else g_vals.clone()
        gW_dec = None
        gb_dec = torch.zeros_like(xc[0])
        if g_xhat is not None:
            crow = torch.arange(0, B * k + 1, k, device=idx.device)
            pattern = torch.sparse_csr_tensor(crow, idx.reshape(-1), torch.zeros_like(vals).reshape(-1), (B, d_sae),
                                              check_invariants=False)
            gv += torch.sparse.sampled_addmm(pattern, g_xhat, W_dec.T).values().view(B, k)  # g[b] · W_dec[idx[b,j]]
            if need_Wd:
                by_feat = _ByFeature(idx, d_sae)
                gW_dec = by_feat.sum_rows(g_xhat, vals)                                  # Σ_b f[b,i] g[b]
            gb_dec += g_xhat.sum(0)
        gp = gv * (vals > 0)                                                            # dL/dpre at the top-k
        gb_enc = torch.zeros_like(W_enc[0]).index_add_(0, idx.reshape(-1), gp.reshape(-1))
        if need_We:
            by_feat = by_feat if g_xhat is not None and need_Wd else _ByFeature(idx, d_sae)
            gW_enc = by_feat.sum_rows(xc, gp).T.contiguous()                           # [d_in, d_sae]
        else:
            gW_enc = None
        gxc = F.embedding_bag(idx, W_enc.T, mode="sum", per_sample_weights=gp) if need_x else None
        if g_pre is not None:                                                           # a loss used pre: dense part
            gb_enc += g_pre.sum(0)
            if need_We: gW_enc += xc.T @ g_pre
            if need_x: gxc = gxc + g_pre @ W_enc.T
        gb_dec -= W_enc @ gb_enc                                                        # b_dec enters as x - b_dec
        return (gxc if need_x else None, gW_enc, gb_enc if need_be else None, gW_dec,
                gb_dec if need_bd else None, None)


def topk_sparse_forward(sae, x: Tensor):
    "SAEOutput of a TopK SAE via TopKSparse; same values and gradients as the plain `sae(x)`."
    from sae_tutorial.sae import SAEOutput
    x = sae._check(x)
    lead, d_in = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, d_in)
    x_hat, vals, idx, pre = TopKSparse.apply(x2, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.cfg.k)
    f = torch.zeros_like(pre).scatter_(-1, idx, vals)      # in place: one [B, d_sae] pass fewer
    d_sae = pre.shape[-1]
    return SAEOutput(x_hat.reshape(*lead, d_in), f.reshape(*lead, d_sae), pre.reshape(*lead, d_sae))


def _fast_pre_acts(self, x: Tensor) -> Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    return encode_centered(x2, self.W_enc, self.b_enc, self.b_dec).reshape(*x.shape[:-1], -1)


def apply(sae, variant: str = "fast"):
    """Switch `sae` (from make_sae) to `variant` in place. "fast": TopK -> topk_sparse_forward,
    other architectures with their own W_enc -> encode_centered pre-activations. "fast-nocheck" also sets
    cfg.check_input=False (no finiteness scan of x per step). "plain": no change."""
    if variant == "plain":
        return sae
    if variant not in ("fast", "fast-nocheck", "center-only"):
        raise ValueError(f"unknown variant {variant!r}; use plain, fast, fast-nocheck or center-only.")
    if variant == "fast-nocheck":
        sae.cfg.check_input = False
    if sae.cfg.architecture == "topk" and variant != "center-only":
        sae.forward = types.MethodType(topk_sparse_forward, sae)
    elif "W_enc" in sae._parameters:
        sae.pre_acts = types.MethodType(_fast_pre_acts, sae)
    return sae


# ---- sparsity penalties for f >= 0 (every SAEOutput.f of relu / topk / batchtopk is >= 0) ----------------------
def l1_nonneg(f: Tensor) -> Tensor:
    "mean over rows of Σ_i f_i for f >= 0: l1_penalty without the abs/sign passes over [B, d_sae]."
    return f.sum(-1).mean()


def l1_wdec_nonneg(f: Tensor, W_dec: Tensor) -> Tensor:
    "mean over rows of Σ_i f_i ‖W_dec[i]‖ for f >= 0, as one column sum and a dot product."
    f2 = f.reshape(-1, f.shape[-1])
    return f2.sum(0) @ W_dec.norm(dim=1) / f2.shape[0]


def patch_losses():
    """Make sae_tutorial.losses use l1_nonneg / l1_wdec_nonneg (benchmark stand-in for the proposed losses.py
    change). Only valid while every penalised f is >= 0 with zero gradient where f == 0 (ReLU, TopK)."""
    import sae_tutorial.losses as L
    L.l1_penalty, L.l1_wdec_penalty = l1_nonneg, l1_wdec_nonneg


@torch.no_grad()
def _usage_update_int32(self, f: Tensor) -> None:
    "FeatureUsage.update with the per-latent count summed as int32 (bool -> int64 sums are ~4x slower on CPU)."
    n, c = f.shape[0], (f > self.threshold).sum(0, dtype=torch.int32).long()
    self.tokens += n
    self.last_fired = torch.where(c > 0, self.tokens, self.last_fired)
    self.counts += c; self.window_tokens += n; self._chunks.append((n, c))
    while self._chunks and self.window_tokens - self._chunks[0][0] >= self.window:
        n0, c0 = self._chunks.popleft(); self.counts -= c0; self.window_tokens -= n0


def patch_trainer():
    "Benchmark stand-in for the proposed train.py change to FeatureUsage.update (same counts, cheaper sum)."
    import sae_tutorial.train as T
    T.FeatureUsage.update = _usage_update_int32
