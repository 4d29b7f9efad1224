#!/usr/bin/env python
"""torch.compile on sae_tutorial's plain SAE step: compile time and steady-state speed vs eager.

Compiles the forward + loss (the optimizer step and decoder renormalisation stay eager), runs one step
(includes compilation), then times `--steps` steps by process CPU time (robust on a shared machine) and wall time.
Writes benchmarks/train_compile.md. Usage: python benchmarks/train_compile.py [--batch 1024] [--threads 1]
"""
import argparse, os, platform, statistics, sys, time, warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sae_tutorial.losses import LossConfig, sae_loss  # noqa: E402
from sae_tutorial.sae import SAEConfig, make_sae  # noqa: E402


def measure(arch, mode, x, steps):
    torch.manual_seed(0)
    sae = make_sae(SAEConfig(d_in=x.shape[1], expansion_factor=8, architecture=arch, k=32, check_input=False, fast=False))  # the plain step: what this page measures
    opt = torch.optim.Adam(sae.parameters(), lr=4e-4)
    lc = LossConfig(sparsity="none") if arch == "topk" else LossConfig(sparsity="l1", sparsity_coeff=5e-3)
    loss_fn = lambda x: sae_loss(sae, x, sae(x), lc).total
    fn = torch.compile(loss_fn) if mode == "compile" else loss_fn

    def step():
        loss = fn(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_parallel_grad_()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        sae.normalize_decoder_()
    t = time.perf_counter()
    step()
    first = time.perf_counter() - t
    cpu, wall = [], []
    for _ in range(steps):
        t, c = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - t); cpu.append(time.process_time() - c)
    return first, statistics.median(wall), statistics.median(cpu)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    x = torch.randn(a.batch, 576)
    lines = ["# torch.compile on the plain SAE step", "",
             f"Command: `python benchmarks/train_compile.py {' '.join(sys.argv[1:])}`", "",
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
             f"{a.threads} threads, batch {a.batch}, d_in 576, d_sae 4608; 1-minute load average at start "
             f"{os.getloadavg()[0]:.1f} (shared machine: wall times are noisy, CPU time is steadier).", "",
             "| arch | mode | first step incl. compile (s, wall) | step (s, wall, median) | step (CPU-s, median) | tokens per CPU-second |",
             "|---|---|---:|---:|---:|---:|"]
    for arch in ("relu", "topk"):
        for mode in ("eager", "compile"):
            first, wall, cpu = measure(arch, mode, x, a.steps)
            lines.append(f"| {arch} | {mode} | {first:.1f} | {wall:.3f} | {cpu:.3f} | {a.batch / cpu:,.0f} |")
            print(lines[-1], flush=True)
    (Path(__file__).parent / "train_compile.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
