#!/usr/bin/env python
"""A TopK / BatchTopK / ReLU training step against its floor: one dense encoder product, timed in the same process.

    python benchmarks/topk_floor.py                         # the table in topk_floor.md (writes topk_floor.json)
    python benchmarks/topk_floor.py --profile repro_topk    # where one setting's step time goes (cProfile, top 25)
    python benchmarks/topk_floor.py --roofline              # the best product/step any implementation could reach here

What a user runs is timed: `train()` over `--steps` steps (after a `--warmup` call of the same length on the same
SAE), ms/step = wall time / steps, tokens/s = batch · steps / wall time. The floor is `torch.addmm(b_enc, x,
W_enc)` at the same shape ([B, d_in] @ [d_in, d_sae]), timed in the same process between the training runs. Every
setting and its floor are repeated `--rounds` times, interleaved (floor, run, floor, run, ...), and the min and
median are reported, because the machine may be shared.

Settings (fp32, `--threads` threads, synthetic sparse data: each row a sum of a few of 4·d_in hidden unit
directions plus noise, like LM activations in miniature):
- topk_576x8:   d_in 576, d_sae 4608, batch 4096, k 32, no auxiliary loss, lr 1e-3.
- repro_topk:   the reproduction's TopK SAE: d_in 576, d_sae 2304, batch 1024, k 64, AuxK (k_aux 512, λ 1/32), lr
                1e-3, dead latents present: `--dead` latents get b_enc = -1e3 so they never fire, and dead_window is
                two batches, so AuxK runs over them from the third step on.
- repro_topk_no_aux: repro_topk without AuxK (what AuxK costs is the difference; only in --breakdown by default).
- batchtopk_576x8: as topk_576x8 with a BatchTopK SAE.
- relu_576x8:   ReLU + L1 at trained-like sparsity: b_enc set so that about 32 latents of 4608 fire per row.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SETTINGS = {
    "topk_576x8": dict(arch="topk", d_in=576, d_sae=4608, batch=4096, k=32, aux="none", dead=0),
    "repro_topk": dict(arch="topk", d_in=576, d_sae=2304, batch=1024, k=64, aux="auxk", dead=64),
    "repro_topk_no_aux": dict(arch="topk", d_in=576, d_sae=2304, batch=1024, k=64, aux="none", dead=64),
    "batchtopk_576x8": dict(arch="batchtopk", d_in=576, d_sae=4608, batch=4096, k=32, aux="none", dead=0),
    "relu_576x8": dict(arch="relu", d_in=576, d_sae=4608, batch=4096, k=32, aux="none", dead=0),
}


def synthetic_batches(d_in: int, batch: int, n: int, seed: int = 0) -> list[torch.Tensor]:
    "n batches [batch, d_in]: each row Σ of ~8 of 4·d_in hidden unit directions (exponential weights) + noise."
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(4 * d_in, d_in, generator=g)
    D /= D.norm(dim=1, keepdim=True)
    out = []
    for _ in range(n):
        on = torch.rand(batch, 4 * d_in, generator=g) < 8 / (4 * d_in)
        w = torch.empty(batch, 4 * d_in).exponential_(generator=g) * on
        out.append(w @ D + 0.05 * torch.randn(batch, d_in, generator=g))
    return out


def make_run(s: dict, seed: int = 0):
    "(sae, batches, loss_cfg, train_cfg factory) for a setting."
    from sae_tutorial.sae import SAEConfig, make_sae
    from sae_tutorial.losses import LossConfig
    from sae_tutorial.train import TrainConfig
    torch.manual_seed(seed)
    cfg = SAEConfig(d_in=s["d_in"], expansion_factor=s["d_sae"] / s["d_in"], architecture=s["arch"], k=s["k"])
    sae = make_sae(cfg)
    xs = synthetic_batches(s["d_in"], s["batch"], 4, seed)
    with torch.no_grad():
        if s["arch"] == "relu":          # trained-like sparsity: about k of d_sae latents fire per row
            pre = (xs[0] - sae.b_dec) @ sae.W_enc
            sae.b_enc.copy_(-pre.quantile(1 - s["k"] / s["d_sae"], dim=0))
        if s["dead"]: sae.b_enc[: s["dead"]] = -1e3
    if s["aux"] == "auxk": loss = LossConfig(sparsity="none", sparsity_coeff=0.0, aux="auxk", k_aux=512)
    elif s["arch"] == "relu": loss = LossConfig(sparsity="l1", sparsity_coeff=1e-3)
    else: loss = LossConfig(sparsity="none", sparsity_coeff=0.0)
    window = 2 * s["batch"] if s["dead"] else 100_000

    def tcfg(steps): return TrainConfig(lr=1e-3, steps=steps, batch_size=s["batch"], dead_window=window,
                                        log_every=10**9, progress=False)
    return sae, xs, loss, tcfg


def batches_for(xs, steps):
    return [xs[i % len(xs)] for i in range(steps)]


def time_train(sae, xs, loss, tcfg, steps: int) -> float:
    "Seconds of one `train` call of `steps` steps (the SAE continues from where it was)."
    from sae_tutorial.train import train
    b = batches_for(xs, steps)
    t0 = time.perf_counter()
    train(sae, b, loss, tcfg(steps))
    return time.perf_counter() - t0


def time_floor(s: dict, reps: int, warm: bool = False) -> float:
    """Seconds of one addmm [B, d_in] @ [d_in, d_sae] (+ b_enc): the median of `reps`. warm=False: into a fresh
    output, as the step computes it (a [B, d_sae] tensor too large for the allocator to keep: the OS maps new pages
    and the product's first writes fault them in); warm=True: into one output reused every time (`out=`), the
    product alone."""
    x, W, b = torch.randn(s["batch"], s["d_in"]), torch.randn(s["d_in"], s["d_sae"]), torch.randn(s["d_sae"])
    out = torch.empty(s["batch"], s["d_sae"]) if warm else None
    for _ in range(2): torch.addmm(b, x, W, out=out)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter(); torch.addmm(b, x, W, out=out); ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def breakdown(s: dict, steps: int, warmup: int) -> dict:
    """ms per phase of `train`'s step, written out here phase by phase with a clock between them (the same calls in
    the same order as `train`; min over `steps` steps): forward, loss, backward, clip (parallel-gradient removal,
    norm, clip), optimizer (fused Adam, scheduler, decoder renormalisation), record (dead-latent counts). Beside
    them, alone at the same shape: the encoder product (the floor) and torch.topk."""
    from sae_tutorial.losses import sae_loss
    from sae_tutorial.train import FeatureUsage, make_optimizer, train
    sae, xs, loss, tcfg = make_run(s)
    train(sae, batches_for(xs, warmup), loss, tcfg(warmup))           # dead latents appear, weights move
    cfg = tcfg(steps)
    opt = make_optimizer(sae, cfg)
    usage = FeatureUsage(sae.cfg.d_sae, cfg.dead_window, 0.0)
    params = list(sae.parameters())
    ph = {k: [] for k in ("forward", "loss", "backward", "clip", "optimizer", "record")}
    sae.train()
    for i in range(steps + 2):
        x = xs[i % len(xs)]
        dead = usage.dead_mask() if i >= 2 else (sae.b_enc < -100)
        t = [time.perf_counter()]
        out = sae(x); t.append(time.perf_counter())
        lo = sae_loss(sae, x, out, loss, dead_mask=dead); t.append(time.perf_counter())
        opt.zero_grad(set_to_none=True); lo.total.backward(); t.append(time.perf_counter())
        sae.remove_parallel_grad_(); norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        bool(torch.isfinite(norm)); t.append(time.perf_counter())
        opt.step(); sae.normalize_decoder_(); t.append(time.perf_counter())
        with torch.no_grad(): usage.update_counts(len(x), usage.firings_active(out.active) if out.active is not None else usage.firings(out.f))
        usage.dead_mask().sum(); t.append(time.perf_counter())
        if i >= 2:
            for k, a, b in zip(ph, t, t[1:]): ph[k].append(1e3 * (b - a))
    from sae_tutorial.fast import row_topk
    with torch.no_grad(): pre = sae.pre_acts(xs[0])                     # this SAE's pre-activations
    tk, rk = [], []
    for _ in range(steps):
        t0 = time.perf_counter(); pre.topk(s["k"], dim=-1, sorted=False); tk.append(1e3 * (time.perf_counter() - t0))
        t0 = time.perf_counter(); row_topk(pre, s["k"]); rk.append(1e3 * (time.perf_counter() - t0))
    row = {k: min(v) for k, v in ph.items()}
    row["step_sum"] = sum(row.values())
    row["product_alone"] = 1e3 * min(time_floor(s, 5) for _ in range(3))
    row["topk_alone"] = min(tk) if s["arch"] == "topk" else None
    row["row_topk_alone"] = min(rk) if s["arch"] == "topk" else None     # what TopKSparse calls
    row["n_dead"] = int(usage.dead_mask().sum())
    return row


def bound(s: dict, reps: int, warmup: int) -> dict:
    """ms of each piece a TopK training step cannot avoid, each timed alone (min over `reps`) with the kernel the
    package uses for it, on this SAE after `warmup` training steps: the encoder product (the floor), the top-k choice
    (`row_topk`), the decode (`embedding_bag`), the reconstruction loss's gradient, dL/dvals at the k pairs per row
    (`sampled_addmm`), grouping the pairs by latent (`_ByFeature`), W_dec's and W_enc's gradients (`embedding_bag`
    per latent; W_enc's transposed into place), the biases' gradients, fused Adam over all parameters, and the
    decoder's unit-norm constraint (parallel-gradient removal + renormalisation). Gradient clipping (train's default,
    optional) is listed apart. `best_ratio` = product / (product + the required pieces): what product / step would
    be if a step were nothing but these kernels, back to back, with no autograd, no AuxK, no clipping and no Python."""
    import torch.nn.functional as F
    from sae_tutorial.fast import _ByFeature, _topk_rows, row_topk
    from sae_tutorial.train import make_optimizer, train
    assert s["arch"] == "topk", "bound: TopK settings only"
    sae, xs, loss, tcfg = make_run(s)
    train(sae, batches_for(xs, warmup), loss, tcfg(warmup))
    x, k = xs[0], s["k"]
    W_enc, b_enc, W_dec, b_dec = (p.detach() for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec))
    xc = x - b_dec
    pre = torch.addmm(b_enc, xc, W_enc)
    top, idx = row_topk(pre, k); vals = top.relu()
    x_hat = F.embedding_bag(idx, W_dec, per_sample_weights=vals, mode="sum").add_(b_dec)
    g_xhat = (x_hat - x).mul_(2 / x.numel())
    rows, crow = _topk_rows(*idx.shape, idx.device); cols = idx.reshape(-1)
    by_feat = _ByFeature(rows, cols, W_dec.shape[0])
    import warnings
    with warnings.catch_warnings():          # "sparse CSR support is in beta", as in fast._active_backward
        warnings.simplefilter("ignore")
        pattern = torch.sparse_csr_tensor(crow, cols, torch.zeros_like(vals.reshape(-1)), pre.shape, check_invariants=False)
        gp = torch.sparse.sampled_addmm(pattern, g_xhat, W_dec.T).values() * (vals.reshape(-1) > 0)
    opt = make_optimizer(sae, tcfg(1))
    for p in sae.parameters(): p.grad = torch.randn_like(p) * 1e-3
    params = list(sae.parameters())
    pieces = {
        "product (the floor)": lambda: torch.addmm(b_enc, xc, W_enc),
        "top-k choice (row_topk)": lambda: row_topk(pre, k),
        "decode (embedding_bag)": lambda: F.embedding_bag(idx, W_dec, per_sample_weights=vals, mode="sum").add_(b_dec),
        "loss and its gradient": lambda: ((x_hat - x).pow(2).mean(), (x_hat - x).mul_(2 / x.numel())),
        "dL/dvals at the pairs (sampled_addmm)": lambda: torch.sparse.sampled_addmm(pattern, g_xhat, W_dec.T),
        "pairs grouped by latent (_ByFeature)": lambda: _ByFeature(rows, cols, W_dec.shape[0]),
        "W_dec gradient (embedding_bag per latent)": lambda: by_feat.sum_rows(g_xhat, vals.reshape(-1)),
        "W_enc gradient (the same, transposed)": lambda: by_feat.sum_rows(xc, gp).T.contiguous(),
        "bias gradients": lambda: (torch.zeros_like(b_enc).index_add_(0, cols, gp), g_xhat.sum(0) - W_enc @ b_enc),
        "fused Adam, all parameters": lambda: opt.step(),
        "decoder norm (parallel-gradient removal, renormalise)": lambda: (sae.remove_parallel_grad_(), sae.normalize_decoder_()),
        "gradient clipping (optional)": lambda: torch.nn.utils.clip_grad_norm_(params, 1.0),
    }
    ms = {n: [] for n in pieces}
    for _ in range(reps):                                   # interleaved, so a noisy moment hits every piece alike
        for n, fn in pieces.items():
            t0 = time.perf_counter(); fn(); ms[n].append(1e3 * (time.perf_counter() - t0))
    row = {n: min(v) for n, v in ms.items()}
    product = row["product (the floor)"]
    required = sum(v for n, v in row.items() if n != "product (the floor)" and "optional" not in n)
    macs = s["batch"] * s["d_in"] * s["d_sae"]
    sparse_macs = 4 * s["batch"] * k * s["d_in"]            # decode, dL/dvals, W_dec and W_enc gradients
    return {"pieces_ms": row, "required_ms": required, "best_ratio": product / (product + required),
            "product_gmac_per_s": macs / product * 1e-6,
            "sparse_pieces_gmac_per_s": sparse_macs / sum(row[n] for n in ("decode (embedding_bag)",
                "dL/dvals at the pairs (sampled_addmm)", "W_dec gradient (embedding_bag per latent)",
                "W_enc gradient (the same, transposed)")) * 1e-6,
            "sparse_share_of_product_macs": sparse_macs / macs}


def roofline(s: dict, reps: int) -> dict:
    """The best product / step ANY implementation of this training step could reach on this machine: each piece the
    step needs costed at this machine's measured rates, with nothing else (no autograd, no Python, no page faults).
    Rates: the encoder product's own multiply-add rate (timed here, into a reused output) for the dense products;
    the read bandwidth of a cache-resident [d_sae, d_in] tensor (timed with `sum`: the best case) for everything
    that moves memory, although Adam's and the constraint's working set (4 tensors of every parameter) is larger
    than the last-level cache on small machines. Traffic per piece, float32:
    - top-k: read pre once, B·S values;
    - decode: the k decoder rows of every row, B·k·d_in values; the loss and its gradient: x, x_hat, g (3·B·d_in);
    - backward: per latent, the g rows and the xc rows of its pairs (2·B·k·d_in values; dL/dvals, W_dec's and
      W_enc's gradients all come from these two reads), and the two gradients written (2·S·d_in);
    - AuxK (with n_dead dead latents): its four [B, n_dead, d_in] products at the product's rate;
    - Adam: parameter, gradient and both moments read, three written (7 values per parameter);
    - the unit-norm constraint: W_dec and its gradient read, the gradient written, W_dec read and written (5·S·d_in);
      the gradient norm: every gradient read once."""
    B, d, S, k = s["batch"], s["d_in"], s["d_sae"], s["k"]
    n_dead = s["dead"] if s["aux"] == "auxk" else 0
    product = time_floor(s, reps, warm=True)
    mac_rate = B * d * S / product
    big = torch.randn(S, d)
    for _ in range(3): big.sum()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter(); big.sum(); ts.append(time.perf_counter() - t0)
    bw = 4 * big.numel() / min(ts)                                     # bytes / s
    stream = torch.randn(64 * 2**20); out = torch.empty_like(stream)
    for _ in range(2): out.copy_(stream)
    ts = []
    for _ in range(max(3, reps // 4)):
        t0 = time.perf_counter(); out.copy_(stream); ts.append(time.perf_counter() - t0)
    dram = 2 * 4 * stream.numel() / min(ts)
    n_params = 2 * S * d + S + d
    pieces = {"top-k (read pre)": 4 * B * S / bw,
              "decode + loss and its gradient": 4 * (B * k * d + 3 * B * d) / bw,
              "backward (g and xc rows per latent, two gradients written)": 4 * (2 * B * k * d + 2 * S * d) / bw,
              "AuxK (four dense products over the dead latents)": 4 * B * n_dead * d / mac_rate,
              "Adam (7 values per parameter)": 4 * 7 * n_params / bw,
              "unit-norm constraint and gradient norm": 4 * (5 * S * d + n_params) / bw}
    rest = sum(pieces.values())
    adam_dram = 4 * 7 * n_params / dram - pieces["Adam (7 values per parameter)"]   # its 4·n_params working set in DRAM
    return {"product_ms": 1e3 * product, "gmac_per_s": mac_rate * 1e-9, "cache_read_GB_per_s": bw * 1e-9,
            "dram_copy_GB_per_s": dram * 1e-9, "pieces_ms": {n: 1e3 * v for n, v in pieces.items()},
            "rest_ms": 1e3 * rest, "best_ratio": product / (product + rest),
            "adam_working_set_MB": 16 * n_params / 2**20, "best_ratio_adam_from_dram": product / (product + rest + adam_dram)}


def machine() -> dict:
    try: model = next(l.split(":", 1)[1].strip() for l in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines() if l.startswith("Model name"))
    except Exception: model = platform.processor()
    return {"cpu": model, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "loadavg": os.getloadavg()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--settings", default=",".join(n for n in SETTINGS if n != "repro_topk_no_aux"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", default=None, help="a setting name: cProfile one train() call of --steps steps")
    ap.add_argument("--breakdown", action="store_true", help="ms per phase of the step (min over --steps)")
    ap.add_argument("--bound", action="store_true", help="ms of each piece a TopK step cannot avoid, timed alone "
                    "(min over --steps), and the best product/step those kernels allow")
    ap.add_argument("--roofline", action="store_true", help="the best product/step any implementation could reach: "
                    "every piece the step needs at this machine's measured product rate and cache bandwidth")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: the main thread's CPU time (time.thread_time), steadier on a busy machine at --threads 1")
    ap.add_argument("--out", default=None, help="jsonl file to append this run to (default: print only)")
    ap.add_argument("--report", default=None, help="a jsonl of runs: print its markdown table and stop")
    ap.add_argument("--label", default="", help="recorded in the json (e.g. the commit)")
    ap.add_argument("--keep-freed-memory", action="store_true", help="glibc only: allocate every block under 1 GiB "
                    "from the heap and never give freed memory back (mallopt), so a fresh [B, d_sae] output reuses "
                    "pages instead of faulting in new ones")
    a = ap.parse_args()
    if a.report: return report(a.report)
    if a.keep_freed_memory:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3                     # glibc's malloc.h
        assert libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1
    torch.set_num_threads(a.threads)
    if a.clock == "cpu": time.perf_counter = time.thread_time       # every clock read below
    if a.profile:
        s = SETTINGS[a.profile]
        sae, xs, loss, tcfg = make_run(s)
        time_train(sae, xs, loss, tcfg, a.warmup)
        pr = cProfile.Profile(); pr.enable()
        dt = time_train(sae, xs, loss, tcfg, a.steps)
        pr.disable()
        print(f"{a.profile}: {1e3 * dt / a.steps:.1f} ms/step under cProfile; floor {1e3 * time_floor(s, 20):.1f} ms")
        pstats.Stats(pr).sort_stats("tottime").print_stats(25)
        return
    if a.roofline:
        for n in a.settings.split(","):
            r = roofline(SETTINGS[n], a.steps)
            print(f"{n}: product {r['product_ms']:.1f} ms ({r['gmac_per_s']:.0f} GMAC/s), cache-resident read "
                  f"{r['cache_read_GB_per_s']:.0f} GB/s, DRAM copy {r['dram_copy_GB_per_s']:.0f} GB/s; " +
                  "; ".join(f"{p} {v:.2f}" for p, v in r["pieces_ms"].items()) +
                  f" -> the rest at least {r['rest_ms']:.1f} ms, best product/step {r['best_ratio']:.0%} "
                  f"({r['best_ratio_adam_from_dram']:.0%} with Adam's {r['adam_working_set_MB']:.0f} MB from DRAM)", flush=True)
            if a.out:
                with open(a.out, "a") as fh: fh.write(json.dumps({"machine": machine(), "label": a.label, "setting": n, **r}) + "\n")
        return
    if a.bound:
        res = {"machine": machine(), "label": a.label, "reps": a.steps, "warmup": a.warmup, "settings": {}}
        for n in a.settings.split(","):
            r = res["settings"][n] = bound(SETTINGS[n], a.steps, a.warmup)
            print(f"{a.label} {n}: " + "; ".join(f"{p} {v:.2f}" for p, v in r["pieces_ms"].items()))
            print(f"   required without the product {r['required_ms']:.1f} ms -> best product/step {r['best_ratio']:.0%}; "
                  f"product {r['product_gmac_per_s']:.0f} GMAC/s, the four sparse pieces {r['sparse_pieces_gmac_per_s']:.1f} "
                  f"GMAC/s ({r['sparse_share_of_product_macs']:.1%} of the product's MACs)", flush=True)
        if a.out:
            with open(a.out, "a") as fh: fh.write(json.dumps(res) + "\n")
        return
    if a.breakdown:
        for n in a.settings.split(","):
            row = breakdown(SETTINGS[n], a.steps, a.warmup)
            print(f"{a.label:>10} {n:>16}: " + "  ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                                      for k, v in row.items()), flush=True)
        return
    names = a.settings.split(",")
    runs = {n: make_run(SETTINGS[n]) for n in names}
    for n in names: time_train(*runs[n], a.warmup)           # warm-up: dead latents marked, Adam state made
    res = {n: {"step_s": [], "floor_s": [], "floor_warm_s": []} for n in names}
    for r in range(a.rounds):
        for n in names:
            res[n]["floor_s"].append(time_floor(SETTINGS[n], 10))
            res[n]["floor_warm_s"].append(time_floor(SETTINGS[n], 10, warm=True))
            res[n]["step_s"].append(time_train(*runs[n], a.steps) / a.steps)
    load_start = os.getloadavg()
    out = {"machine": machine(), "label": a.label, "steps": a.steps, "warmup": a.warmup, "rounds": a.rounds,
           "settings": {}}
    out["machine"]["loadavg_start"] = load_start
    for n in names:
        st, fl = res[n]["step_s"], res[n]["floor_s"]
        row = {**SETTINGS[n], **res[n], "step_ms_min": 1e3 * min(st), "step_ms_median": 1e3 * statistics.median(st),
               "floor_ms_min": 1e3 * min(fl), "floor_ms_median": 1e3 * statistics.median(fl),
               "tokens_per_s_median": SETTINGS[n]["batch"] / statistics.median(st)}
        row["floor_frac_min"] = row["floor_ms_min"] / row["step_ms_min"]
        row["floor_frac_median"] = row["floor_ms_median"] / row["step_ms_median"]
        row["floor_warm_ms_median"] = 1e3 * statistics.median(res[n]["floor_warm_s"])
        row["floor_warm_frac_median"] = row["floor_warm_ms_median"] / row["step_ms_median"]
        out["settings"][n] = row
        print(f"{a.label:>10} {n:>16}: step {row['step_ms_min']:7.1f} / {row['step_ms_median']:7.1f} ms (min/median), "
              f"floor {row['floor_ms_min']:6.1f} / {row['floor_ms_median']:6.1f} ms, floor/step "
              f"{row['floor_frac_min']:.0%} / {row['floor_frac_median']:.0%}, {row['tokens_per_s_median']:,.0f} tok/s; "
              f"product into a reused output {row['floor_warm_ms_median']:.1f} ms ({row['floor_warm_frac_median']:.0%})",
              flush=True)
    if a.out:
        with open(a.out, "a") as fh: fh.write(json.dumps(out) + "\n")


def report(path: str) -> None:
    "The markdown table of a jsonl of runs: per label and setting, min and median over every run's steps and floors."
    text = Path(path).read_text()
    runs = json.loads(text)["runs"] if path.endswith(".json") else [json.loads(l) for l in text.splitlines() if l.strip()]
    print("| setting | code | step ms (min / median) | tokens/s (median) | product ms (min / median) | product / step (min / median) "
          "| product into a reused output ms (median) | that / step (median) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    names = list(dict.fromkeys(n for r in runs for n in r["settings"]))
    for n in names:
        for label in dict.fromkeys(r["label"] for r in runs):
            st = [v for r in runs if r["label"] == label and n in r["settings"] for v in r["settings"][n]["step_s"]]
            fl = [v for r in runs if r["label"] == label and n in r["settings"] for v in r["settings"][n]["floor_s"]]
            if not st: continue
            B = SETTINGS[n]["batch"]
            fw = [v for r in runs if r["label"] == label and n in r["settings"] for v in r["settings"][n].get("floor_warm_s", [])]
            smin, smed, fmin, fmed = 1e3 * min(st), 1e3 * statistics.median(st), 1e3 * min(fl), 1e3 * statistics.median(fl)
            warm = f"{1e3 * statistics.median(fw):.1f} | {1e3 * statistics.median(fw) / smed:.0%}" if fw else "- | -"
            print(f"| {n} | {label} | {smin:.1f} / {smed:.1f} | {B / statistics.median(st) * 1e-3:,.1f}k | {fmin:.1f} / {fmed:.1f} "
                  f"| {fmin / smin:.0%} / {fmed / smed:.0%} | {warm} |")


if __name__ == "__main__":
    sys.exit(main())
