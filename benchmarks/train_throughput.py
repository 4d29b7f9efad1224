#!/usr/bin/env python
"""SAE training throughput: sae_tutorial vs SAELens vs dictionary_learning, same data, same math.

One command (repo root, after `bash benchmarks/other_tools/setup.sh`):

    .venv/bin/python benchmarks/train_throughput.py

(or point SAE_BENCH_OTHER_PY at any python with SAELens and dictionary_learning installed).

What it does
- Makes one synthetic activation set (sparse sums of hidden unit-norm directions + noise, like
  LM activations in miniature) and one set of initial weights, both saved as safetensors in a
  temp folder. Every tool starts from those exact weights and sees the exact same batches.
- Runs each tool's own trainer step in its own subprocess (the other tools live in
  benchmarks/.venv-other; sae_tutorial in the project venv): SAELens `SAETrainer.step`,
  dictionary_learning `StandardTrainer.update` / `TopKTrainer.update` / `BatchTopKTrainer.update`, sae_tutorial `train`.
  Architectures (--archs): relu, topk, batchtopk (BATCHTOPK_NOTES says how each BatchTopK pair is matched).
- "Same math": the tools disagree on conventions, so each comparison is a *pair* run under one
  convention and our trainer is configured to follow the other tool's convention (see
  CONVENTIONS below). Round 0 records the first `--check-steps` losses of every run from the same
  initial weights; the table reports the largest relative difference to the paired run.
- Throughput: `--warmup` untimed steps, then `--steps` timed steps; tokens/s = batch*steps/time.
  Runs are interleaved (A B A B ...) over `--rounds` rounds and the median is reported, because
  the machine may be shared. Memory: peak RSS above the pre-build baseline, sampled by a thread
  (CPU), or torch.cuda.max_memory_allocated (GPU).
- Writes benchmarks/train_throughput.{md,json} (machine, command, versions, every raw number).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, NamedTuple

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# the other tools' interpreter: benchmarks/.venv-other (made by other_tools/setup.sh), or $SAE_BENCH_OTHER_PY
OTHER_PY = Path(os.environ.get("SAE_BENCH_OTHER_PY") or HERE / ".venv-other" / "bin" / "python")
VARIANTS = ("plain", "fast")  # ours: SAEConfig(fast=False) / SAEConfig(fast=True), the package default
# TopK top-k alternatives, each the fast path with another row_topk: fast-g<G> = TopKSAE.topk_groups = G (two rounds
# over G slices), fast-triton = benchmarks/topk_triton.py's single-pass kernel (CUDA + Triton only).


def known_variant(v: str) -> bool:
    return v in VARIANTS or v == "fast-triton" or (v.startswith("fast-g") and v[6:].isdigit())

# Each convention is the loss/optimizer recipe of one tool; our trainer is configured to match it.
CONVENTIONS = {
    "saelens": dict(
        doc="SAELens SAETrainer: plain Adam, grad-norm clip 1.0, no decoder normalisation; "
            "recon = sum_d (x-x_hat)^2 averaged over tokens; ReLU sparsity = l1 * sum_i f_i*||W_dec[i]||; "
            "TopK with rescale_acts_by_decoder_norm=False (pure TopK, cheaper than its default).",
        normalize_decoder=False, clip=1.0, relu_sparsity="l1_wdec"),
    "dictionary_learning": dict(
        doc="dictionary_learning: ReLU = StandardTrainer (ConstrainedAdam: project out the decoder-parallel "
            "gradient, Adam, renormalise decoder; no clipping; sparsity = l1 * sum_i |f_i|); TopK = TopKTrainer "
            "(same projection + renormalisation, grad-norm clip 1.0). recon = sum_d (x-x_hat)^2 averaged over tokens.",
        normalize_decoder=True, clip=None, relu_sparsity="l1"),
}
CONV_TOPK_CLIP = {"saelens": 1.0, "dictionary_learning": 1.0}
# BatchTopK (--archs batchtopk): the clipping and decoder handling of each convention are TopK's; what else each tool's
# BatchTopK step does and how it is matched (rendered into the markdown when batchtopk rows are present):
BATCHTOPK_DECAY = 0.99  # the eval threshold's EMA decay: ours SAEConfig.batchtopk_threshold_decay (its default),
#                         SAELens topk_threshold_lr = 1 - decay (its default), dictionary_learning threshold_beta = decay
BATCHTOPK_NOTES = {
    "saelens": "BatchTopKTrainingSAE (a TopKTrainingSAE whose activation keeps the int(k*B) largest ReLU(pre) of the "
               "whole batch) through the same SAETrainer.step as TopK: plain Adam, grad-norm clip 1.0, no decoder "
               "normalisation, recon = sum_d (x-x_hat)^2 averaged over tokens. Its default rescale_acts_by_decoder_norm=True "
               "(select on pre*||W_dec[i]||, decode with W_dec[i]/||W_dec[i]||) is switched off, as for TopK, so it is "
               "the pure BatchTopK ours runs (ours with normalize_decoder=False). Its AuxK (aux_loss_coefficient 1) is "
               "inactive (no latent is dead this early); ours runs aux='none'. Eval threshold: an EMA, "
               f"topk_threshold_lr = {1 - BATCHTOPK_DECAY:g}, of the smallest positive kept value, the same update as ours, "
               "but its EMA starts from 0 (float64 buffer) where ours (NaN at start) takes the first batch's value, so "
               "after n steps SAELens's = ours - decay^n * m_1 (m_1: the first batch's smallest kept value). This cannot "
               "be configured away; it does not enter the training loss.",
    "dictionary_learning": "BatchTopKTrainer: the k*B largest ReLU(pre) of the batch, recon = sum_d (x-x_hat)^2 "
               "averaged over tokens, decoder-parallel gradient projected out, grad-norm clip 1.0, Adam, decoder "
               "renormalised (ours with normalize_decoder=True, clip 1.0). Stepped from step=1 as its TopKTrainer "
               "(step=0 would set b_dec to the batch's geometric median). Its AuxK (auxk_alpha 1/32, dead after 10M "
               "tokens without firing) is inactive in these runs; ours runs aux='none'. Eval threshold: its defaults "
               f"(threshold_beta 0.999, updates only after step 1000) are set to ours: threshold_beta = {BATCHTOPK_DECAY:g}, "
               "threshold_start_step = 0, so both take the first batch's smallest kept value and then the same EMA.",
}


# ----------------------------------------------------------------------------------------------
# shared helpers (workers use only torch + safetensors + the tool under test)
# ----------------------------------------------------------------------------------------------
def make_data(n: int, d_in: int, seed: int = 0) -> torch.Tensor:
    """Synthetic activations [n, d_in]: each token is a sparse non-negative sum of hidden unit
    directions (about 20 of 4*d_in active, exponential magnitudes) plus a shared offset and noise."""
    g = torch.Generator().manual_seed(seed)
    n_true = 4 * d_in
    D = torch.randn(n_true, d_in, generator=g)   # the hidden directions (true_directions repeats this draw)
    D /= D.norm(dim=1, keepdim=True)
    p = 20 / n_true
    active = torch.rand(n, n_true, generator=g) < p
    mags = -torch.log(torch.rand(n, n_true, generator=g).clamp_min(1e-12))
    s = (active * mags).to_sparse()
    x = torch.sparse.mm(s, D)
    x += 0.05 * torch.randn(n, d_in, generator=g) + 0.5 * torch.randn(d_in, generator=g)
    return x.contiguous()


def make_init(d_in: int, d_sae: int, seed: int = 1) -> dict[str, torch.Tensor]:
    """Initial weights in sae_tutorial's layout: W_enc [d_in, d_sae], W_dec [d_sae, d_in] (unit rows),
    W_enc = W_dec.T, b_enc = 0, b_dec = 0."""
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    return dict(W_enc=W_dec.T.contiguous(), b_enc=torch.zeros(d_sae), W_dec=W_dec.contiguous(),
                b_dec=torch.zeros(d_in))


def true_directions(d_in: int, seed: int = 0) -> torch.Tensor:
    "The 4*d_in hidden unit directions [4*d_in, d_in] that make_data(seed=seed) sums."
    D = torch.randn(4 * d_in, d_in, generator=torch.Generator().manual_seed(seed))
    return D / D.norm(dim=1, keepdim=True)


def make_sparse_init(x: torch.Tensor, d_sae: int, target_l0: float, seed: int = 1) -> dict[str, torch.Tensor]:
    """Weights like a ReLU SAE part-way through training, where most of a run's steps are spent: the first
    4*d_in decoder rows are the data's hidden directions, the rest random unit rows; W_enc = W_dec.T,
    b_dec = the data mean, and one shared b_enc = -t with t chosen so that a token fires `target_l0` latents on
    average. Every tool starts from these same weights, so the comparison stays like for like."""
    d_in = x.shape[1]
    init = make_init(d_in, d_sae, seed)
    D = true_directions(d_in)
    W_dec = init["W_dec"].clone()
    W_dec[:D.shape[0]] = D
    b_dec = x.mean(0)
    pre = (x[:2048] - b_dec) @ W_dec.T                              # [2048, d_sae] with b_enc = 0
    t = float(pre.flatten().kthvalue(int(pre.numel() * (1 - target_l0 / d_sae))).values)
    return dict(W_enc=W_dec.T.contiguous(), b_enc=torch.full((d_sae,), -t), W_dec=W_dec, b_dec=b_dec)


def start_l0(arch: str, init: dict, x: torch.Tensor, k: int, batch: int | None = None) -> dict:
    """Active latents per token at the start weights: the mean and the busiest token (ReLU), or k (TopK). BatchTopK:
    over the first batch (`batch` rows), with `min_kept` = the smallest positive kept value (its first threshold)."""
    if arch == "batchtopk":
        acts = torch.relu((x[:batch] - init["b_dec"]) @ init["W_enc"] + init["b_enc"])      # [batch, d_sae]
        vals, idx = acts.flatten().topk(k * len(acts), sorted=False)
        n = torch.zeros(acts.numel()).index_fill_(0, idx, 1.0).view_as(acts).sum(-1)
        return dict(mean=float(n.mean()), max=int(n.max()), min_kept=float(vals[vals > 0].min()))
    if arch != "relu": return dict(mean=float(k), max=k)
    n = torch.cat([(((xb - init["b_dec"]) @ init["W_enc"] + init["b_enc"]) > 0).sum(-1).float()
                   for xb in x.split(2048)])
    return dict(mean=float(n.mean()), max=int(n.max()))


def time_cuda(fn, reps: int = 20, cuda: bool = True) -> float:
    """Median milliseconds of fn() over `reps` calls after 3 warm-up calls, timed with CUDA events; without CUDA
    (`cuda=False` or none available) one call timed with the host clock (dry runs)."""
    if not (cuda and torch.cuda.is_available()):
        t = time.perf_counter(); fn(); return (time.perf_counter() - t) * 1e3
    for _ in range(3): fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); b.synchronize(); ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def matmul_ceiling(B: int, d_in: int, d_sae: int, device: str, dtype=torch.float32, reps: int = 20) -> dict:
    """The encoder's product [B, d_in] @ [d_in, d_sae] timed alone on `device` (median of `reps` after warm-up,
    three input sets rotated so the cache is not what is timed): the rate a step's dense work can reach."""
    xs = [torch.randn(B, d_in, device=device, dtype=dtype) for _ in range(3)]
    Ws = [torch.randn(d_in, d_sae, device=device, dtype=dtype) for _ in range(3)]
    turn = itertools.cycle(range(3))
    t = time_cuda(lambda: (lambda i: xs[i] @ Ws[i])(next(turn)), reps) / 1e3
    return dict(dtype=str(dtype), seconds=t, tflops=2 * B * d_in * d_sae / t / 1e12,
                tf32=torch.backends.cuda.matmul.allow_tf32)


def step_flops(row: dict, a, l0: dict) -> dict:
    """Multiply-add work of one step, counted two ways (x 2 FLOPs each).
    dense: what a dense step must do, 10*B*d_in*d_sae (encoder forward and W_enc's gradient; decoder forward,
    W_dec's gradient and f's gradient; x needs none). algorithm: what this row's code path must do: the dense count,
    or for ours (fast) on a sparse path 2*B*d_in*d_sae (the encoder) + 8*n*d_in for the n non-zeros of f (decode,
    f's gradient at them, W_dec's and W_enc's gradients from them): n = B*k for TopK, B*(mean L0) for ReLU, whose
    sparse path runs when at most 1/64 (GPU) or 1/8 (CPU) of f is non-zero (ReLUSAE.sparse_max_density)."""
    B, D, S = a.batch, a.d_in, a.d_in * a.expansion
    dense = 10 * B * D * S
    algo = dense
    if row["tool"] == "ours" and row["variant"].startswith("fast"):
        limit = 1 / 64 if a.device.startswith("cuda") else 1 / 8
        if row["arch"] in ("topk", "batchtopk") or l0["mean"] / S <= limit:
            algo = 2 * B * D * S + 8 * B * l0["mean"] * D
    return dict(dense=dense, algorithm=algo)


class PeakRSS:
    """Samples this process's RSS every few ms; `peak_mb` is the maximum seen since start()."""

    def __init__(self, every_s: float = 0.01):
        self.every_s, self.peak, self._stop = every_s, 0, threading.Event()
        self.page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self.page

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.every_s)

    def start(self):
        self.peak = self.rss()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.rss())
        return self.peak / 2**20


# ----------------------------------------------------------------------------------------------
# workers: build a trainer from the shared init, expose step(x) -> loss-or-None
# ----------------------------------------------------------------------------------------------
class Built(NamedTuple):
    """One tool's trainer, built from the shared init (what each BUILDERS entry returns; whole_run.py uses it too)."""
    run: Callable        # run(batches, n_steps, want_loss, sync) -> (losses or None, [(wall s, CPU s) per step])
    versions: dict       # package versions (+ the code path of ours)
    weights: Callable    # () -> the trained {W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_in], b_dec}, in our layout, on the CPU
    history: Callable = lambda: None  # () -> ours: the last run's per-step TrainHistory as a dict; other tools: None
    threshold: Callable = lambda: None  # () -> BatchTopK: the eval threshold (float) after the steps run; else None


def _l1_warmup(a) -> int:
    "Steps of linear L1 warm-up (whole_run.py sets it; train_throughput.py runs have none)."
    return int(getattr(a, "l1_warmup", 0) or 0)


def _ours_layout(W_enc, b_enc, W_dec, b_dec) -> dict:
    return {k: v.detach().float().cpu().clone(memory_format=torch.contiguous_format) for k, v in
            dict(W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec).items()}


def build_saelens(a, init, device):
    import sae_lens
    from sae_lens import LoggingConfig, SAETrainer, StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    d_in, d_sae = init["W_enc"].shape
    if a.arch == "relu":
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, device=device,
                                                            l1_coefficient=a.l1, l1_warm_up_steps=_l1_warmup(a)))
    elif a.arch == "batchtopk":  # see BATCHTOPK_NOTES
        sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, device=device, k=a.k,
                                                              rescale_acts_by_decoder_norm=False,
                                                              topk_threshold_lr=1 - BATCHTOPK_DECAY))
    else:
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, device=device, k=a.k,
                                                    rescale_acts_by_decoder_norm=False))
    with torch.no_grad():  # same layout as ours: W_enc [d_in, d_sae], W_dec [d_sae, d_in]
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, name).copy_(init[name])
    total = a.batch * 10**6
    cfg = SAETrainerConfig(total_training_samples=total, train_batch_size_samples=a.batch, lr=a.lr,
                           lr_end=a.lr / 10, device=device, dead_feature_window=10**6,
                           feature_sampling_window=10**6, logger=LoggingConfig(log_to_wandb=False))
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=iter(()))
    if a.arch == "relu" and _l1_warmup(a):
        # SAELens's step s uses l1 * s / warm_up (0 at the first step), ours and dictionary_learning's
        # l1 * (s + 1) / warm_up: advancing its coefficient scheduler once makes the schedules the same
        for sched in trainer.coefficient_schedulers.values():
            sched.step()

    def step(x, want_loss):
        trainer.maybe_reset_sparsity()          # what SAETrainer.fit does around each step
        out = trainer.step(x)
        trainer.n_training_steps += 1
        return out.loss.item() if want_loss else None

    return Built(stepper(step), {"sae-lens": sae_lens.__version__},
                 lambda: _ours_layout(sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec),
                 threshold=(lambda: float(sae.topk_threshold)) if a.arch == "batchtopk" else (lambda: None))


def build_dictionary_learning(a, init, device):
    import importlib.metadata as md
    from dictionary_learning.trainers import BatchTopKTrainer, StandardTrainer, TopKTrainer

    d_in, d_sae = init["W_enc"].shape
    common = dict(steps=10**7, activation_dim=d_in, dict_size=d_sae, layer=0, lm_name="bench",
                  lr=a.lr, warmup_steps=0, device=device)
    if a.arch == "relu":
        tr = StandardTrainer(l1_penalty=a.l1, sparsity_warmup_steps=_l1_warmup(a) or None, **common)
        ae_b_dec = tr.ae.bias
    elif a.arch == "batchtopk":  # see BATCHTOPK_NOTES: its eval-threshold EMA set to ours
        tr = BatchTopKTrainer(k=a.k, threshold_beta=BATCHTOPK_DECAY, threshold_start_step=0, **common)
        ae_b_dec = tr.ae.b_dec
    else:
        tr = TopKTrainer(k=a.k, **common)
        ae_b_dec = tr.ae.b_dec
    with torch.no_grad():  # nn.Linear layout: encoder.weight [d_sae, d_in], decoder.weight [d_in, d_sae]
        tr.ae.encoder.weight.copy_(init["W_enc"].T)
        tr.ae.encoder.bias.copy_(init["b_enc"])
        tr.ae.decoder.weight.copy_(init["W_dec"].T)
        ae_b_dec.copy_(init["b_dec"])
    count = [0]

    def step(x, want_loss):
        # steps are numbered from 1: TopKTrainer.update(step=0) replaces b_dec by the batch's geometric
        # median (an init choice, not part of a step); no schedule here depends on the number.
        count[0] += 1
        loss = None
        if a.arch == "batchtopk":  # BatchTopKTrainer.update returns the loss it minimised; an extra .loss call
            return tr.update(count[0], x)  # would move its threshold EMA (and firing counts) a second time
        if want_loss:  # StandardTrainer.update returns nothing; read the loss it is about to minimise
            with torch.no_grad():
                loss = float(tr.loss(x, step=count[0]))
        r = tr.update(count[0], x)
        return loss if loss is not None else r

    return Built(stepper(step), {"dictionary-learning": md.version("dictionary-learning")},
                 lambda: _ours_layout(tr.ae.encoder.weight.T, tr.ae.encoder.bias, tr.ae.decoder.weight.T, ae_b_dec),
                 threshold=(lambda: float(tr.ae.threshold)) if a.arch == "batchtopk" else (lambda: None))


def build_ours(a, init, device):
    """sae_tutorial: `train(sae, batches, loss_cfg, train_cfg)` when the package has it (the timed
    iterator below stamps each batch request), else the documented per-step recipe of the contract."""
    sys.path.insert(0, str(ROOT))
    import sae_tutorial
    from sae_tutorial.losses import LossConfig, sae_loss
    from sae_tutorial.sae import SAEConfig, make_sae

    conv = CONVENTIONS[a.convention]
    d_in, d_sae = init["W_enc"].shape
    if not known_variant(a.variant):
        raise ValueError(f"unknown variant {a.variant!r}; use one of {', '.join(VARIANTS)}, fast-g<G>, fast-triton.")
    if a.variant.startswith("fast-g"):
        from sae_tutorial.sae import TopKSAE
        TopKSAE.topk_groups = int(a.variant[6:])
    if a.variant == "fast-triton":
        import sae_tutorial.fast
        from topk_triton import topk_triton
        sae_tutorial.fast.row_topk = lambda pre, k, groups=None: topk_triton(pre, k)
    cfg = SAEConfig(d_in=d_in, expansion_factor=d_sae / d_in, architecture=a.arch, k=a.k,
                    normalize_decoder=conv["normalize_decoder"], fast=a.variant.startswith("fast"),
                    **(dict(batchtopk_threshold_decay=BATCHTOPK_DECAY) if a.arch == "batchtopk" else {}))
    sae = make_sae(cfg, device=device)
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, name).copy_(init[name])
    lcfg = LossConfig(sparsity=conv["relu_sparsity"] if a.arch == "relu" else "none",
                      sparsity_coeff=a.l1 if a.arch == "relu" else 0.0)
    clip = conv["clip"] if a.arch == "relu" else CONV_TOPK_CLIP[a.convention]
    versions = {"sae_tutorial": getattr(sae_tutorial, "__version__", "?")}
    weights = lambda: _ours_layout(sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)
    threshold = (lambda: float(sae.threshold)) if a.arch == "batchtopk" else (lambda: None)
    try:
        from sae_tutorial.train import TrainConfig, train
    except ImportError:
        train = None

    if train is not None:
        last = {}

        def run(batches, n_steps, want_loss, sync):
            stamps = []

            def stream():
                for i in range(n_steps):
                    sync()
                    stamps.append((time.perf_counter(), time.process_time()))
                    yield batches[i % len(batches)]
            tcfg = TrainConfig(lr=a.lr, steps=n_steps, decay="constant", warmup_steps=0, clip_grad_norm=clip,
                               sparsity_warmup_steps=_l1_warmup(a) if a.arch == "relu" else 0,
                               progress=False, log_every=max(n_steps, 1), device=device)
            res = train(sae, stream(), lcfg, tcfg)
            last["history"] = res.history
            sync()
            stamps.append((time.perf_counter(), time.process_time()))
            return (res.history.loss if want_loss else None), [(t1[0] - t0[0], t1[1] - t0[1])
                                                               for t0, t1 in zip(stamps, stamps[1:])]
        versions["path"] = "sae_tutorial.train.train"
        return Built(run, versions, weights, lambda: last["history"].as_dict() if last else None, threshold)

    if _l1_warmup(a):
        raise NotImplementedError("the per-step fallback has no L1 warm-up; update sae_tutorial (it needs train.train).")
    opt = torch.optim.Adam(sae.parameters(), lr=a.lr)

    def step(x, want_loss):
        out = sae(x)
        loss = sae_loss(sae, x, out, lcfg)
        opt.zero_grad(set_to_none=True)
        loss.total.backward()
        sae.remove_parallel_grad_()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(sae.parameters(), clip)
        opt.step()
        sae.normalize_decoder_()
        return loss.total.item() if want_loss else None

    versions["path"] = "per-step loop (sae_tutorial.train not found)"
    return Built(stepper(step), versions, weights, threshold=threshold)


def stepper(step):
    """Turn a per-step function into run(batches, n_steps, want_loss, sync) -> (losses, per-step seconds)."""
    def run(batches, n_steps, want_loss, sync):
        losses, times = [], []
        for i in range(n_steps):
            t, c = time.perf_counter(), time.process_time()
            losses.append(step(batches[i % len(batches)], want_loss))
            sync()
            times.append((time.perf_counter() - t, time.process_time() - c))
        return (losses if want_loss else None), times
    return run


BUILDERS = {"saelens": build_saelens, "dictionary_learning": build_dictionary_learning, "ours": build_ours}


def timing_of(a) -> str:
    "'block' (default on a GPU): tokens/s over the timed steps run back to back, as in training; 'step' (default on a CPU): the median of steps timed one by one."
    return getattr(a, "timing", None) or ("block" if a.device.startswith("cuda") else "step")


def worker(a) -> dict:
    from safetensors.torch import load_file

    torch.set_num_threads(a.threads)
    device = a.device
    data = load_file(a.data)["x"].to(device)
    init = {k: v.to(device) for k, v in load_file(a.init).items()}
    n_batches = data.shape[0] // a.batch
    batches = [data[i * a.batch:(i + 1) * a.batch] for i in range(n_batches)]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    res = {"tool": a.tool, "arch": a.arch, "convention": a.convention, "variant": a.variant, "start": a.start,
           "torch": torch.__version__, "threads": torch.get_num_threads(),
           "loadavg_start": os.getloadavg()[0]}

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    mem = PeakRSS().start()
    base_rss = mem.peak / 2**20
    t0 = time.perf_counter()
    run, versions = BUILDERS[a.tool](a, init, device)[:2]
    res["build_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if timing_of(a) == "block":      # warm-up, then the timed steps as one stretch: one sync before, one after
        run(batches, a.warmup, False, sync)
        sync(); t, c = time.perf_counter(), time.process_time()
        run(batches, a.steps, False, lambda: None)
        sync(); t, c = time.perf_counter() - t, time.process_time() - c
        times, cpu = [t / a.steps] * a.steps, [c / a.steps] * a.steps
    else:                            # every step timed alone, the GPU synchronised before and after it
        _, all_times = run(batches, a.warmup + a.steps, False, sync)
        times = [t for t, _ in all_times[a.warmup:]]
        cpu = [c for _, c in all_times[a.warmup:]]
    res["run_s"] = time.perf_counter() - t0
    res["timing"] = timing_of(a)
    peak_rss = mem.stop()
    res.update(versions=versions, step_s=times, step_cpu_s=cpu, tokens_per_s=a.batch / statistics.median(times),
               tokens_per_cpu_s=a.batch / statistics.median(cpu),
               rss_base_mb=base_rss, rss_peak_mb=peak_rss, mem_train_mb=peak_rss - base_rss,
               loadavg_end=os.getloadavg()[0])
    if device.startswith("cuda"):
        res["cuda_peak_mb"] = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
        res["mem_train_mb"] = res["cuda_peak_mb"]
    del run
    if a.check_steps:  # after timing, so the RSS baseline above is not inflated by freed check-run memory
        built = BUILDERS[a.tool](a, init, device)
        res["losses"] = [float(l) for l in built.run(batches, a.check_steps, True, sync)[0]]
        if (thr := built.threshold()) is not None:   # BatchTopK: the eval threshold after the check steps
            res["threshold"] = thr
    return res


# ----------------------------------------------------------------------------------------------
# orchestrator
# ----------------------------------------------------------------------------------------------
def machine() -> dict:
    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    mem = ""
    try:
        mem = next(l.split(":", 1)[1].strip() for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return dict(cpu=cpu, cores=os.cpu_count(), mem=mem, gpu=gpu, platform=platform.platform(),
                python=platform.python_version(), torch=torch.__version__)


def jobs_for(archs, tools, variants, starts=("init",)):
    """(tool, arch, convention, variant, start) runs; each other tool is paired with ours (every variant) in its
    convention. The `sparse` start applies to ReLU only: a TopK step does the same work from any weights."""
    convs = [t for t in tools if t != "ours"] or ["dictionary_learning"]
    jobs = []
    for arch in archs:
        for start in (starts if arch == "relu" else [s for s in starts if s == "init"] or ["init"]):
            for conv in convs:
                if conv in tools:
                    jobs.append((conv, arch, conv, "plain", start))
                if "ours" in tools:
                    jobs += [("ours", arch, conv, v, start) for v in variants]
    return jobs


def run_one(a, job, data_path, init_paths, check):
    tool, arch, conv, variant, start = job
    py = str(OTHER_PY) if tool != "ours" else sys.executable
    cmd = [py, str(Path(__file__).resolve()), "--worker", "--tool", tool, "--arch", arch, "--start", start,
           "--convention", conv, "--variant", variant, "--data", str(data_path), "--init", str(init_paths[start]),
           "--device", a.device, "--batch", str(a.batch), "--steps", str(a.steps), "--warmup", str(a.warmup),
           "--check-steps", str(a.check_steps if check else 0), "--threads", str(a.threads), "--timing", timing_of(a),
           "--lr", str(a.lr), "--l1", str(a.l1), "--k", str(a.k)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
               WANDB_MODE="disabled", TQDM_DISABLE="1")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        return {"tool": tool, "arch": arch, "convention": conv, "variant": variant, "start": start,
                "error": p.stderr.strip().splitlines()[-5:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def summarise(runs, a) -> tuple[list[dict], str]:
    keyf = lambda r: (r["arch"], r.get("start", "init"), r["convention"], r["tool"], r["variant"])
    groups: dict = {}
    for r in runs:
        groups.setdefault(keyf(r), []).append(r)
    rows = []
    for key, rs in groups.items():
        ok = [r for r in rs if "error" not in r]
        row = dict(arch=key[0], start=key[1], convention=key[2], tool=key[3], variant=key[4], n=len(ok))
        if not ok:
            row["error"] = rs[0]["error"]
            rows.append(row)
            continue
        tps = [r["tokens_per_s"] for r in ok]
        row.update(tokens_per_s=statistics.median(tps), tps_min=min(tps), tps_max=max(tps),
                   tokens_per_cpu_s=statistics.median(r["tokens_per_cpu_s"] for r in ok),
                   mem_train_mb=statistics.median(r["mem_train_mb"] for r in ok),
                   rss_peak_mb=statistics.median(r["rss_peak_mb"] for r in ok),
                   losses=next((r["losses"] for r in ok if r.get("losses")), None),
                   versions=ok[0]["versions"])
        if (thr := next((r["threshold"] for r in ok if "threshold" in r), None)) is not None:
            row["threshold"] = thr
        l0 = getattr(a, "l0", {}).get(f"{row['arch']}/{row['start']}")
        if l0: row["l0"] = l0
        if getattr(a, "ceiling", None) and l0:
            fl = step_flops(row, a, l0)
            row.update(flops=fl, tflops_algorithm=fl["algorithm"] / a.batch * row["tokens_per_s"] / 1e12,
                       tflops_dense=fl["dense"] / a.batch * row["tokens_per_s"] / 1e12)
            row["pct_of_ceiling"] = 100 * row["tflops_algorithm"] / a.ceiling["tflops"]
        rows.append(row)
    # pair: loss agreement + speedup of ours over the tool in the same convention
    for row in rows:
        if row["tool"] == "ours" or "error" in row:
            continue
        for o in rows:
            if o["tool"] == "ours" and o["arch"] == row["arch"] and o["convention"] == row["convention"] \
                    and o["start"] == row["start"] and "error" not in o:
                o["speedup_vs_" + row["tool"]] = o["tokens_per_s"] / row["tokens_per_s"]
                o["cpu_speedup_vs_" + row["tool"]] = o["tokens_per_cpu_s"] / row["tokens_per_cpu_s"]
                if o.get("losses") and row.get("losses"):
                    o["max_rel_loss_diff"] = max(abs(x - y) / abs(y) for x, y in zip(o["losses"], row["losses"]))
    return rows, render(rows, a)


def render(rows, a) -> str:
    gpu = bool(getattr(a, "ceiling", None))
    lines = ["| arch | start: L0 mean / busiest | convention | tool | tokens/s (median) | min–max over rounds | "
             "tokens per CPU-second | peak mem above baseline (MB) | speedup of ours (wall / CPU) | "
             "first steps' losses: max rel. diff to tool |" + (" TFLOP/s: algorithm / dense count | % of matmul ceiling |" if gpu else ""),
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if gpu else "")]
    for r in sorted(rows, key=lambda r: (r["arch"], r.get("start", "init"), r["convention"], r["tool"] == "ours", r["variant"])):
        name = r["tool"] + (f" ({r['variant']})" if r["tool"] == "ours" else "")
        l0 = r.get("l0")
        start = r.get("start", "init") + (f": {l0['mean']:.0f} / {l0['max']}" if l0 else "")
        if "error" in r:
            lines.append(f"| {r['arch']} | {start} | {r['convention']} | {name} | error: {' / '.join(r['error'])[:120]} | | | | | |"
                         + (" | |" if gpu else ""))
            continue
        sp = next((f"{v:.2f}× / {r['cpu_' + k]:.2f}×" for k, v in r.items() if k.startswith("speedup_vs_")), "")
        ld = f"{r['max_rel_loss_diff']:.1e}" if "max_rel_loss_diff" in r else ""
        fl = (f" {r['tflops_algorithm']:.1f} / {r['tflops_dense']:.1f} | {r['pct_of_ceiling']:.0f} % |"
              if "pct_of_ceiling" in r else (" | |" if gpu else ""))
        lines.append(f"| {r['arch']} | {start} | {r['convention']} | {name} | {r['tokens_per_s']:,.0f} | "
                     f"{r['tps_min']:,.0f}–{r['tps_max']:,.0f} | {r['tokens_per_cpu_s']:,.0f} | {r['mem_train_mb']:,.0f} | "
                     f"{sp} | {ld} |" + fl)
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tool", default="ours")
    ap.add_argument("--convention", default="saelens")
    ap.add_argument("--variant", default="plain")
    ap.add_argument("--data")
    ap.add_argument("--init")
    ap.add_argument("--arch", default="relu")
    ap.add_argument("--start", default="init", help=argparse.SUPPRESS)
    ap.add_argument("--starts", default="init,sparse",
                    help="init = fresh weights (half the ReLU latents fire); sparse = part-way-trained-like ReLU weights "
                         "(see make_sparse_init; ReLU only)")
    ap.add_argument("--sparse-l0", type=float, default=32, help="mean active latents per token of the sparse start")
    ap.add_argument("--archs", default="relu,topk", help="comma-separated: relu, topk, batchtopk")
    ap.add_argument("--tools", default="ours,saelens,dictionary_learning")
    ap.add_argument("--variants", default="plain,fast", help="variants of ours: plain = SAEConfig(fast=False), fast = SAEConfig(fast=True) (the default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--d-in", type=int, default=None, help="default 576 on CPU, 768 on GPU")
    ap.add_argument("--expansion", type=int, default=None, help="default 8 on CPU, 32 on GPU")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run (default 10 CPU, 100 GPU)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--check-steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timing", choices=["block", "step"], default=None,
                    help="block: the timed steps back to back, synchronised once before and once after (default on a GPU: "
                         "how training runs); step: each step synchronised and timed alone, the median (default on a CPU)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--l1", type=float, default=5e-3)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--out", default=str(HERE / "train_throughput"), help="writes OUT.md and OUT.json")
    ap.add_argument("--render", metavar="JSON", help="only rewrite the .md/.json from a saved results JSON")
    a = ap.parse_args()
    if a.render:
        return render_only(a.render, a.out)
    gpu = a.device.startswith("cuda")
    a.steps = a.steps or (100 if gpu else 10)
    if a.worker:
        print(json.dumps(worker(a)))
        return
    a.d_in = a.d_in or (768 if gpu else 576)
    a.expansion = a.expansion or (32 if gpu else 8)
    tools = a.tools.split(",")
    if bad := sorted(v for v in a.variants.split(",") if not known_variant(v)):
        sys.exit(f"unknown --variants {bad}; use {','.join(VARIANTS)}, fast-g<G>, fast-triton")
    if any(t != "ours" for t in tools) and not OTHER_PY.exists():
        sys.exit(f"{OTHER_PY} not found: run `bash benchmarks/other_tools/setup.sh` first "
                 "(or point SAE_BENCH_OTHER_PY at a python that has sae_lens and dictionary_learning)")
    from safetensors.torch import save_file

    tmp = Path(tempfile.mkdtemp(prefix="sae_bench_"))
    n_batches = 4
    x = make_data(n_batches * a.batch, a.d_in)
    save_file({"x": x}, str(tmp / "data.safetensors"))
    starts = a.starts.split(",")
    inits = {"init": make_init(a.d_in, a.d_in * a.expansion)}
    if "sparse" in starts: inits["sparse"] = make_sparse_init(x, a.d_in * a.expansion, a.sparse_l0)
    init_paths = {}
    for name, init in inits.items():
        init_paths[name] = tmp / f"init_{name}.safetensors"
        save_file(init, str(init_paths[name]))
    a.l0 = {f"{arch}/{st}": start_l0(arch, inits[st], x, a.k, a.batch) for arch in a.archs.split(",") for st in inits}
    a.ceiling = matmul_ceiling(a.batch, a.d_in, a.d_in * a.expansion, a.device) if gpu else None
    if gpu: print(f"matmul ceiling: {a.ceiling}", file=sys.stderr, flush=True)
    jobs = jobs_for(a.archs.split(","), tools, a.variants.split(","), starts)
    runs = []
    t0 = time.time()
    cmd = "python " + " ".join([str(Path(__file__).relative_to(ROOT))] + sys.argv[1:])
    for rnd in range(a.rounds):  # interleaved: every job once per round
        for job in jobs:
            r = run_one(a, job, tmp / "data.safetensors", init_paths, check=(rnd == 0))
            r["round"] = rnd
            runs.append(r)
            msg = r.get("error") or f"{r['tokens_per_s']:,.0f} tok/s, {r['mem_train_mb']:,.0f} MB"
            print(f"round {rnd} {job}: {msg}", file=sys.stderr, flush=True)
            Path(a.out + ".partial.json").write_text(json.dumps(dict(command=cmd, args=vars(a), runs=runs)))
    write_results(a, runs, cmd, machine(), time.time() - t0)
    Path(a.out + ".partial.json").unlink(missing_ok=True)


def write_results(a, runs, cmd, m, wall_s):
    rows, table = summarise(runs, a)
    note = (f"Machine: {m['cpu']}, {m['cores']} cores, {m['mem']} RAM, GPU: {m['gpu']}; torch {m['torch']}; "
            f"device {a.device}. d_in {a.d_in}, d_sae {a.d_in * a.expansion}, batch {a.batch} tokens, "
            f"{a.warmup} warm-up + {a.steps} timed steps per run (tokens/s "
            + ("from the median step" if "timing" not in vars(a)   # a results JSON from before --timing: its wording
               else "over the timed steps run back to back, synchronised once before and once after: how training runs"
               if timing_of(a) == "block" else "from the median step, each step synchronised and timed alone")
            + f"), {a.rounds} "
            f"interleaved rounds (A B A B ...), median shown; {a.threads} torch threads. Wall time {wall_s:.0f} s.")
    if getattr(a, "ceiling", None):
        c = a.ceiling
        note += (f" Matmul ceiling measured in this run: the encoder's product [{a.batch}, {a.d_in}] @ [{a.d_in}, "
                 f"{a.d_in * a.expansion}] alone in {c['dtype']} (TF32 {'on' if c['tf32'] else 'off'}) took "
                 f"{c['seconds'] * 1e3:.2f} ms = {c['tflops']:.1f} TFLOP/s; '% of matmul ceiling' is a row's "
                 "algorithm TFLOP/s over that (step_flops in the script says how each row's work is counted).")
    loads = [r["loadavg_start"] for r in runs if "loadavg_start" in r]
    if loads:
        note += (f" 1-minute load average during the runs: median {statistics.median(loads):.1f} "
                 f"(max {max(loads):.1f}) on {m['cores']} cores" + (" — the machine was shared, so wall-clock "
                 "numbers are noisy; tokens per CPU-second (process CPU time) is the steadier measure." 
                 if statistics.median(loads) > 1.5 * (m["cores"] or 1) else "."))
    md = ["# SAE training throughput", "", f"Command: `{cmd}`", "", note, "", table, "",
          "Each row is one trainer step of that tool (forward, loss, backward, its gradient handling, Adam) on the "
          "same batches from the same initial weights; ours runs `sae_tutorial.train.train`. `ours (fast)` is the "
          "package default, `SAEConfig(fast=True)`: TopK decode and backward on the k active latents only, and the same for "
          "ReLU on f's non-zeros once at most 1/8 (CPU) or 1/64 (GPU) of f is non-zero; b_dec's gradient by a "
          "matrix-vector product, L1 without abs for f >= 0 (nbs/02b_fast_paths.ipynb, the fast paths appendix); fused Adam on a GPU. `ours (plain)` "
          "is `SAEConfig(fast=False)`, the plain autograd path; tests/test_fast_pkg.py checks both give the same "
          "outputs and gradients. "
          "Memory: peak RSS above the process's RSS before the trainer was built (CPU), or peak "
          "torch.cuda.max_memory_allocated (GPU). Losses: the first steps' total losses of ours against the "
          "tool's in the same convention (relative difference; float32).", "",
          "Conventions (ours is configured to follow each tool's convention in its pair):", ""]
    md += [f"- **{k}**: {v['doc']}" for k, v in CONVENTIONS.items()]
    md += ["", "Starts: `init` = fresh weights (W_enc = W_dec.T, b_enc = 0: half of a ReLU SAE's latents fire); "
           "`sparse` = weights like a ReLU SAE part-way through training, where a run spends most of its steps "
           "(make_sparse_init: the data's hidden directions as decoder rows, b_dec at the data mean, one b_enc "
           "chosen for a mean L0 of --sparse-l0). Every tool starts from the same weights. The L0 column gives the "
           "mean and the busiest token's active latents at the start. benchmarks/relu_run.md times a whole ReLU run, "
           "dense start included."]
    md += ["", "dictionary_learning's TopKTrainer is stepped from step=1: at step=0 it replaces b_dec by the first "
           "batch's geometric median (an initialisation, not a training step), which would break the identical start. "
           "Its AuxK and SAELens's AuxK are inactive here (no latent is dead this early), as is ours (aux='none')."]
    md += batchtopk_notes(rows, a)
    (Path(a.out + ".md")).write_text("\n".join(md) + "\n")
    Path(a.out + ".json").write_text(json.dumps(dict(command=cmd, machine=m, args=vars(a), rows=rows,
                                                     runs=runs, wall_s=wall_s), indent=1))
    print(table)


def batchtopk_notes(rows, a) -> list[str]:
    """The markdown on the BatchTopK rows (none without them): what each tool's step does and how ours is matched
    (BATCHTOPK_NOTES), and the eval threshold each run ended its check steps with."""
    btk = [r for r in rows if r["arch"] == "batchtopk" and "error" not in r]
    if not btk:
        return []
    md = ["", "BatchTopK (ours: `BatchTopKSAE`, in training the k·B largest ReLU(pre) of the batch of B rows; its eval "
          f"threshold an EMA, decay {BATCHTOPK_DECAY:g}, of the smallest positive kept value, the first batch setting it). "
          "Each tool's BatchTopK step and how the pair is matched:", ""]
    md += [f"- **{k}**: {v}" for k, v in BATCHTOPK_NOTES.items() if any(r["convention"] == k for r in btk)]
    thr = [r for r in btk if "threshold" in r]
    if thr:
        n = a.check_steps
        m1 = (getattr(a, "l0", None) or {}).get("batchtopk/init", {}).get("min_kept")
        parts = []
        for r in sorted(thr, key=lambda r: (r["convention"], r["tool"] != "ours", r["variant"])):
            name = r["tool"] + (f" ({r['variant']})" if r["tool"] == "ours" else "")
            extra = (f" (+ decay^{n} * m_1 = {r['threshold'] + BATCHTOPK_DECAY ** n * m1:.6g})"
                     if r["tool"] == "saelens" and m1 is not None else "")
            parts.append(f"{r['convention']} / {name}: {r['threshold']:.6g}{extra}")
        md += ["", f"Eval threshold after the {n} check steps: " + "; ".join(parts)
               + (f". m_1, the first batch's smallest kept value at the start weights, is {m1:.6g}." if m1 is not None else ".")]
    return md


def render_only(path: str, out: str):
    "Rewrite OUT.md (and OUT.json) from a saved JSON without re-running anything."
    d = json.loads(Path(path).read_text())
    a = argparse.Namespace(**{**d["args"], "out": out})
    write_results(a, d["runs"], d["command"], d.get("machine") or machine(), d.get("wall_s", float("nan")))





if __name__ == "__main__":
    main()
