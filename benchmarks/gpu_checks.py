#!/usr/bin/env python
"""Checks that need a CUDA GPU, in one short run (results: benchmarks/gpu_checks.md / .json).

    python benchmarks/gpu_checks.py --out benchmarks/gpu_checks

1. fast == plain on the GPU: outputs and every gradient of SAEConfig(fast=True) against fast=False, in float64
   (tolerance 1e-9 relative) and at the benchmark size in float32 (relative error reported), for ReLU (both
   ReLUSparse branches), TopK, BatchTopK and JumpReLU.
2. Determinism: the same seed trained twice on the GPU (50 steps of `train`), bit-identical or not, with the
   default settings and with torch.use_deterministic_algorithms(True) + CUBLAS_WORKSPACE_CONFIG=:4096:8
   (each in a fresh subprocess, since the workspace setting must come before CUDA starts).
4. Host syncs: how many times the CPU waits for the GPU (torch.cuda.set_sync_debug_mode("warn")) in a fast
   forward (as `train` runs it: the SAE's NaN/Inf input test deferred), its backward, and in `train` per step,
   for TopK and ReLU on its sparse branch (TopK's forward and backward are meant to have none; ReLU counts its
   pairs once; `train` reads its NaN/Inf verdict one step late from a pinned copy, so only the history flush
   every `log_every` steps should count: 0.1 per step over these 10).
5. The deferred NaN/Inf check of `train` on the GPU (StepGuard: fused Adam's found_inf and grad_scale, the verdict
   read one step late): a NaN in batch 5 must raise naming batch 5 with finite weights equal, up to the GPU's
   run-to-run rounding, to a clean 5-step run's (W_dec renormalised once more); a clean run with the clip active
   must match the plain check's run within float32 rounding.
3. ReLUSparse's switch on the GPU: forward + backward time of the dense and the sparse branch at 768 x 24576,
   batch 4096, as the fraction of non-zero entries of f grows (the CPU crossover is about 1/6).
"""
from __future__ import annotations

import argparse, json, os, subprocess, sys, time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sae_tutorial.losses import LossConfig, sae_loss          # noqa: E402
from sae_tutorial.sae import SAEConfig, make_sae, ReLUSAE, input_check_deferred   # noqa: E402
sys.path.insert(0, str(ROOT / "benchmarks"))
from train_throughput import time_cuda                         # noqa: E402


def grads(sae, x, lcfg):
    sae.zero_grad(set_to_none=True)
    out = sae(x)
    (sae_loss(sae, x, out, lcfg).total + 0.01 * out.pre.pow(2).mean()).backward()
    return out, {n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None}


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def check_fast_equals_plain(dev):
    rows = []
    cases = [("relu", 1.0), ("relu", 0.0), ("topk", None), ("batchtopk", None), ("jumprelu", None)]
    for dtype, d_in, exp, B in [(torch.float64, 64, 8, 512), (torch.float32, 768, 32, 4096)]:
        for arch, density in cases:
            if density is not None: ReLUSAE.sparse_max_density = density
            torch.manual_seed(0)
            saes = [make_sae(SAEConfig(d_in=d_in, expansion_factor=exp, architecture=arch, k=32, fast=f),
                             device=dev, dtype=dtype) for f in (False, True)]
            with torch.no_grad():
                saes[0].b_enc.fill_(-0.15 if arch == "relu" else 0.0); saes[0].b_dec.normal_(0, 0.1)
            saes[1].load_state_dict(saes[0].state_dict())
            x = torch.randn(B, d_in, device=dev, dtype=dtype)
            lc = LossConfig(sparsity="l1" if arch == "relu" else "none", sparsity_coeff=1e-3)
            (o1, g1), (o2, g2) = grads(saes[0], x, lc), grads(saes[1], x, lc)
            worst = max([rel(o2.x_hat, o1.x_hat), rel(o2.f, o1.f)] + [rel(g2[n], g1[n]) for n in g1])
            density_f = float((o1.f > 0).float().mean())
            rows.append(dict(dtype=str(dtype).split(".")[1], size=f"{d_in}x{d_in * exp}, B={B}",
                             arch=arch + ("" if density is None else f" ({'sparse' if density else 'dense'} branch)"),
                             density_of_f=density_f, max_rel_err=worst, ok=worst < (1e-9 if dtype == torch.float64 else 1e-4)))
            print(rows[-1], flush=True)
    ReLUSAE.sparse_max_density = None
    return rows


DET_CODE = r'''
import sys, torch, json
sys.path.insert(0, sys.argv[1])
from sae_tutorial.core import seed_everything
from sae_tutorial.sae import SAEConfig, make_sae, ReLUSAE
from sae_tutorial.losses import LossConfig
from sae_tutorial.train import TrainConfig, train
if sys.argv[2] == "1": torch.use_deterministic_algorithms(True)
out = {}
for case in ("topk", "relu", "relu_sparse"):
    arch = case.split("_")[0]
    ReLUSAE.sparse_max_density = 1.0 if case == "relu_sparse" else None    # relu_sparse: the sparse branch always
    ws = []
    for rep in range(2):
        seed_everything(0)
        sae = make_sae(SAEConfig(d_in=768, expansion_factor=8, architecture=arch, k=32), device="cuda")
        if case == "relu_sparse":
            with torch.no_grad(): sae.b_enc.fill_(-0.3)
        g = torch.Generator(device="cuda").manual_seed(1)
        data = [torch.randn(4096, 768, device="cuda", generator=g) for _ in range(4)]
        train(sae, (data[i % 4] for i in range(50)), LossConfig(sparsity="l1" if arch == "relu" else "none",
              sparsity_coeff=1e-3), TrainConfig(steps=50, lr=1e-3, progress=False, device="cuda"))
        ws.append({n: p.detach().clone() for n, p in sae.named_parameters()})
    out[case] = dict(bit_identical=all(torch.equal(ws[0][n], ws[1][n]) for n in ws[0]),
                     max_abs_diff=max(float((ws[0][n] - ws[1][n]).abs().max()) for n in ws[0]))
print(json.dumps(out))
'''


def check_determinism():
    res = {}
    for det in ("0", "1"):
        env = dict(os.environ)
        if det == "1": env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", DET_CODE, str(ROOT), det], capture_output=True, text=True, env=env)
        key = "deterministic_algorithms" if det == "1" else "default"
        res[key] = (json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0
                    else {"error": p.stderr.strip().splitlines()[-3:]})
        res[key]["seconds"] = time.perf_counter() - t
        print(key, res[key], flush=True)
    return res


def check_relu_switch(dev):
    d_in, exp, B = 768, 32, 4096
    torch.manual_seed(0)
    sae = make_sae(SAEConfig(d_in=d_in, expansion_factor=exp, architecture="relu"), device=dev)
    x = torch.randn(B, d_in, device=dev)
    lc = LossConfig(sparsity="l1", sparsity_coeff=1e-3)
    pre0 = ((x - sae.b_dec) @ sae.W_enc).detach()
    rows = []

    def step():
        sae.zero_grad(set_to_none=True)
        out = sae(x)
        sae_loss(sae, x, out, lc).total.backward()
    for frac in (0.002, 0.005, 0.01, 0.02, 0.04, 0.08):
        t = float(pre0.flatten().kthvalue(int(pre0.numel() * (1 - frac))).values)
        with torch.no_grad(): sae.b_enc.fill_(-t)
        r = dict(density_of_f=frac, mean_l0=frac * sae.cfg.d_sae)
        for name, dens in (("dense", 0.0), ("sparse", 1.0)):
            ReLUSAE.sparse_max_density = dens
            r[name + "_ms"] = time_cuda(step, reps=10)
        rows.append(r); print(r, flush=True)
    ReLUSAE.sparse_max_density = None
    return rows


def check_syncs(dev):
    "Host syncs (CUDA sync-debug warnings) in a forward, a backward and a `train` step, per architecture."
    import warnings
    from sae_tutorial.train import TrainConfig, train
    rows = []
    for arch in ("topk", "relu"):
        ReLUSAE.sparse_max_density = 1.0 if arch == "relu" else None
        torch.manual_seed(0)
        sae = make_sae(SAEConfig(d_in=768, expansion_factor=8, architecture=arch, k=32), device=dev)
        if arch == "relu":
            with torch.no_grad(): sae.b_enc.fill_(-0.3)
        x = torch.randn(4096, 768, device=dev)
        lc = LossConfig(sparsity="l1" if arch == "relu" else "none", sparsity_coeff=1e-3)
        grads(sae, x, lc); torch.cuda.synchronize()                               # warm-up
        r = dict(arch=arch)

        def count(fn):
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try: fn()
                finally: torch.cuda.set_sync_debug_mode(0)
            msgs = [str(m.message).splitlines()[0][:120] for m in w if "synchroniz" in str(m.message)]
            return len(msgs), msgs[:3]
        sae.zero_grad(set_to_none=True)
        held = {}
        def fwd():
            with input_check_deferred(): held.update(loss=sae_loss(sae, x, sae(x), lc).total)
        r["forward"], r["forward_msgs"] = count(fwd)
        torch.cuda.synchronize()
        r["backward"], r["backward_msgs"] = count(lambda: held["loss"].backward())
        n = 10
        n_sync, msgs = count(lambda: train(sae, [x] * n, lc, TrainConfig(lr=1e-4, progress=False, log_every=n)))
        r["train_per_step"], r["train_msgs"] = n_sync / n, msgs

        def ms_per_step(batches):      # train's data path: batches already on the GPU, or on the CPU (pinned by train)
            torch.cuda.synchronize(); t = time.perf_counter()
            train(sae, batches, lc, TrainConfig(lr=1e-4, progress=False, log_every=len(batches)))
            torch.cuda.synchronize(); return (time.perf_counter() - t) / len(batches) * 1e3
        x_cpu = x.cpu()
        ms_per_step([x] * 5)
        r["ms_per_step_gpu_batches"], r["ms_per_step_cpu_batches"] = ms_per_step([x] * 20), ms_per_step([x_cpu] * 20)
        rows.append(r); print(r, flush=True)
    ReLUSAE.sparse_max_density = None
    return rows


def check_deferred(dev, size=(768, 8), batch=4096):
    "StepGuard(deferred=True) as `train` runs it on one GPU: a NaN batch, and a clean run against the plain check."
    import sae_tutorial.train as T
    from sae_tutorial.train import TrainConfig, train
    d_in, exp = size
    auto, rows = T._defer_checks, []
    try:
        for arch in ("topk", "relu"):
            def sae0():
                torch.manual_seed(0)
                return make_sae(SAEConfig(d_in=d_in, expansion_factor=exp, architecture=arch, k=32), device=dev)
            g = torch.Generator(device=dev).manual_seed(1)
            xs = [torch.randn(batch, d_in, device=dev, generator=g) for _ in range(8)]
            bad = [x.clone() for x in xs]; bad[5][7, 3] = float("nan")
            lc = LossConfig(sparsity="l1" if arch == "relu" else "none", sparsity_coeff=1e-3)
            tc = lambda: TrainConfig(lr=1e-3, steps=8, clip_grad_norm=0.05, progress=False, log_every=8)
            probe = sae0()
            r = dict(arch=arch, deferred=bool(T._defer_checks(T.make_optimizer(probe, tc()), torch.device(dev), 1)))
            sae = sae0()
            try: train(sae, bad, lc, tc()); r["error"] = "none raised"
            except (ValueError, FloatingPointError) as e: r["error"] = f"{type(e).__name__}: {str(e)[:100]}"
            ref = train(sae0(), xs[:5], lc, tc()).sae
            diff = 0.0
            for (n, a), b in zip(ref.named_parameters(), sae.parameters()):
                a = a.detach()
                if n == "W_dec": a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
                diff = max(diff, float((a - b.detach()).abs().max()))
            r.update(names_batch_5="batch index 5" in r["error"], weights_finite=all(bool(torch.isfinite(p).all()) for p in sae.parameters()),
                     max_abs_diff_to_clean_5_steps=diff)
            runs = []
            for d in (False, True):
                T._defer_checks = lambda *a, d=d: d
                runs.append(train(sae0(), xs, lc, tc()))
            T._defer_checks = auto
            r["clipped_steps"] = int(sum(n > 0.05 for n in runs[0].history.grad_norm))
            r["plain_vs_deferred_max_rel"] = max(rel(b.detach(), a.detach()) for a, b in
                                                 zip(runs[0].sae.parameters(), runs[1].sae.parameters()))
            r["ok"] = (r["names_batch_5"] and r["weights_finite"] and diff < 1e-4 and r["plain_vs_deferred_max_rel"] < 1e-4)
            rows.append(r); print(r, flush=True)
    finally:
        T._defer_checks = auto
    return rows


def render(res: dict) -> str:
    "benchmarks/gpu_checks.md from the results dict."
    md = ["# GPU checks", "", f"Command: `{res.get('command')}` on {res.get('gpu')}, torch {res.get('torch')}.", ""]
    if "fast_equals_plain" in res:
        md += ["## fast == plain on the GPU", "", "Largest relative difference (‖fast − plain‖ / ‖plain‖) over x_hat, f "
               "and every parameter's gradient; loss = recon (+ L1 for ReLU) + 0.01·mean(pre²).", "",
               "| dtype | size | architecture | fraction of f non-zero | max rel. error | ok |", "|---|---|---|---:|---:|---|"]
        md += [f"| {r['dtype']} | {r['size']} | {r['arch']} | {r.get('density_of_f', float('nan')):.4f} | "
               f"{r['max_rel_err']:.1e} | {'yes' if r['ok'] else 'NO'} |" for r in res["fast_equals_plain"]]
        md.append("")
    if "determinism" in res:
        md += ["## Determinism", "", "The same seed trained twice (50 `train` steps, 768 x 6144, batch 4096, float32).", "",
               "| setting | case (relu_sparse: ReLU on its sparse branch) | bit-identical | max abs diff of a weight |",
               "|---|---|---|---:|"]
        for key, d in res["determinism"].items():
            if "error" in d: md.append(f"| {key} | error: {' / '.join(d['error'])[:100]} | | |"); continue
            md += [f"| {key} | {case} | {v['bit_identical']} | {v['max_abs_diff']:.2e} |"
                   for case, v in d.items() if isinstance(v, dict)]
        md.append("")
    if "relu_switch" in res:
        md += ["## ReLUSparse's switch on the GPU", "", "Forward + backward of a ReLU SAE (768 x 24576, batch 4096, "
               "float32, L1 loss), median of 10, as the fraction of f's entries that are non-zero grows.", "",
               "| fraction of f non-zero | mean L0 | dense branch (ms) | sparse branch (ms) |", "|---:|---:|---:|---:|"]
        md += [f"| {r['density_of_f']:.3f} | {r['mean_l0']:.0f} | {r['dense_ms']:.2f} | {r['sparse_ms']:.2f} |"
               for r in res["relu_switch"]]
        md.append("")
    if "syncs" in res:
        md += ["## Host syncs", "", "CUDA sync-debug warnings (the CPU waiting for the GPU) at 768 x 6144, batch 4096: "
               "one forward with its loss (input test deferred, as in `train`), its backward, and `train` per step over 10 steps "
               "(one history flush at the end: 0.1 per step).", "",
               "| architecture | forward | backward | train, per step | first messages | train ms/step: batches on the GPU / on the CPU |",
               "|---|---:|---:|---:|---|---:|"]
        md += [f"| {r['arch']} | {r['forward']} | {r['backward']} | {r['train_per_step']:.1f} | "
               f"{' / '.join(r['forward_msgs'] + r['backward_msgs'])[:160]} | "
               f"{r.get('ms_per_step_gpu_batches', float('nan')):.2f} / {r.get('ms_per_step_cpu_batches', float('nan')):.2f} |"
               for r in res["syncs"]]
    if "deferred" in res:
        md += ["", "## train's deferred NaN/Inf check", "", "768 x 6144, batch 4096, 8 steps, clip 0.05: a NaN in batch 5, "
               "then a clean run with the plain check and with the deferred one.", "",
               "| architecture | deferred | error | weights finite | max abs diff to a clean 5-step run | steps clipped | "
               "plain vs deferred (max rel.) | ok |", "|---|---|---|---|---:|---:|---:|---|"]
        md += [f"| {r['arch']} | {r['deferred']} | {r['error'][:70]} | {r['weights_finite']} | "
               f"{r['max_abs_diff_to_clean_5_steps']:.1e} | {r['clipped_steps']} | {r['plain_vs_deferred_max_rel']:.1e} | "
               f"{'yes' if r['ok'] else 'NO'} |" for r in res["deferred"]]
    return "\n".join(md) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "gpu_checks"))
    ap.add_argument("--only", default="equal,determinism,deferred,switch,syncs")
    ap.add_argument("--render", metavar="JSON", help="only write OUT.md from a saved JSON")
    a = ap.parse_args()
    if a.render:
        Path(a.out + ".md").write_text(render(json.loads(Path(a.render).read_text()))); return
    if not torch.cuda.is_available(): sys.exit("gpu_checks.py needs a CUDA GPU.")
    dev = "cuda"
    res = dict(gpu=torch.cuda.get_device_name(0), torch=torch.__version__, command="python " + " ".join(sys.argv))
    t0 = time.perf_counter()
    for key, name, check in [("equal", "fast_equals_plain", lambda: check_fast_equals_plain(dev)),   # cheap ones first:
                             ("deferred", "deferred", lambda: check_deferred(dev)),                    # a timeout keeps them
                             ("syncs", "syncs", lambda: check_syncs(dev)),
                             ("determinism", "determinism", check_determinism)]:
        if key in a.only: res[name] = check()
        Path(a.out + ".json").write_text(json.dumps(res, indent=1))
    Path(a.out + ".json").write_text(json.dumps(res, indent=1))
    if "switch" in a.only: res["relu_switch"] = check_relu_switch(dev)
    res["wall_s"] = time.perf_counter() - t0
    Path(a.out + ".json").write_text(json.dumps(res, indent=1))
    Path(a.out + ".md").write_text(render(res))
    print(render(res))


if __name__ == "__main__":
    main()
