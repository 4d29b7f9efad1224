#!/usr/bin/env python
"""A whole ReLU+L1 training run on real SmolLM2 activations: the fast path (SAEConfig(fast=True), the default) vs the
plain autograd path, from the same seed, on a finished reproduction's training store.

    python benchmarks/relu_run.py --run runs/smollm2-135m-cpu      # after `make reproduce` (the cpu preset)

Why: a ReLU SAE starts dense (half its latents fire at init) and only becomes sparse as the L1 penalty bites, so the
per-step numbers of train_throughput.md (fresh weights, or weights that are already sparse) bracket a real run;
this measures one. The run starts the ReLU SAE as reproduce.train_sae does (`start_sae`: same configs, b_dec at
the data mean; same batches) and times `train` alone. Writes benchmarks/relu_run.{md,json}.
"""
from __future__ import annotations

import argparse, json, os, platform, sys, time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from sae_tutorial.metrics import evaluate                                                # noqa: E402
from sae_tutorial.reproduce import ReproConfig, SAESpec, epoch_batches, load_store, start_sae  # noqa: E402
from sae_tutorial.train import train                                                     # noqa: E402


def one_run(cfg: ReproConfig, store, eval_store, fast: bool) -> dict:
    spec = SAESpec("relu", "relu", cfg.expansion, cfg.seed, True)
    sae, loss_cfg, train_cfg = start_sae(spec, cfg, store, fast=fast)      # exactly reproduce.train_sae's start
    t0, c0 = time.perf_counter(), time.process_time()
    res = train(sae, epoch_batches(store, cfg.batch_size, spec.seed), loss_cfg, replace(train_cfg, progress=False))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    ev = evaluate(sae, eval_store.batches(4096, shuffle=False))
    d_sae = sae.cfg.d_sae
    sparse_from = next((s for s, l in zip(res.history.step, res.history.l0) if l / d_sae <= 1 / 8), None)
    return dict(fast=fast, steps=res.steps, tokens=res.steps * cfg.batch_size, wall_s=wall, cpu_s=cpu,
                tokens_per_s=res.steps * cfg.batch_size / wall, d_sae=d_sae, first_step_at_or_below_1_8=sparse_from,
                final_loss=res.history.loss[-1], final_l0=res.history.l0[-1], eval_l0=ev.l0,
                eval_explained_variance=ev.explained_variance, resamples=[list(e) for e in res.resamples])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(ROOT / "runs" / "smollm2-135m-cpu"), help="a finished reproduction's folder")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "relu_run"))
    a = ap.parse_args()
    run = Path(a.run)
    if not (run / "config.json").exists() or not (run / "data_train" / "store").exists():
        sys.exit(f"{run} is not a finished reproduction (config.json, data_train/store); run `make reproduce` first.")
    torch.set_num_threads(a.threads)
    d = json.loads((run / "config.json").read_text())
    cfg = ReproConfig.from_dict(d)
    store, eval_store = load_store(run / "data_train" / "store"), load_store(run / "data_eval" / "store")
    rows = []
    for fast in (True, False, True, False):                       # interleaved, twice
        rows.append(one_run(cfg, store, eval_store, fast))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    med = lambda f: float(np.median([r["wall_s"] for r in rows if r["fast"] == f]))
    speedup = med(False) / med(True)
    fast_r, plain_r = rows[0], rows[1]
    md = ["# A whole ReLU+L1 training run: fast vs plain path", "",
          f"Command: `python benchmarks/relu_run.py --run {a.run} --threads {a.threads}`", "",
          f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{a.threads} thread(s); load average at the end {os.getloadavg()[0]:.1f}. Store: {run}/data_train/store "
          f"({store.n_rows:,} rows of SmolLM2-135M {cfg.hook}), d_in {store.d_in}, d_sae {fast_r['d_sae']}, "
          f"{fast_r['steps']} steps of {cfg.batch_size} tokens, L1 coefficient {cfg.relu.l1_coeff}, the reproduction's cpu "
          "preset schedule (warm-up, cosine decay, L1 warm-up over the first 10 %, Anthropic resampling).", "",
          "| path | train wall (s), two runs | tokens/s (median) | first step with ≤ 1/8 of f non-zero | final L0 | held-out EV |",
          "|---|---|---:|---:|---:|---:|"]
    for f in (True, False):
        rs = [r for r in rows if r["fast"] == f]
        walls = " / ".join("%.1f" % r["wall_s"] for r in rs)
        md.append(f"| {'fast (default)' if f else 'plain'} | {walls} | "
                  f"{rs[0]['tokens'] / med(f):,.0f} | {rs[0]['first_step_at_or_below_1_8']} | {rs[0]['final_l0']:.1f} | "
                  f"{rs[0]['eval_explained_variance']:.4f} |")
    md += ["", f"**The whole run is {speedup:.2f}× faster on the fast path.** The two paths compute the same maths "
           "(tests/test_fast_pkg.py); in float32 their rounding differs, so the runs drift apart slightly (final L0 and "
           "EV above). The plain path's per-step speed is that of SAELens's and dictionary_learning's dense steps "
           "(train_throughput.md: 0.98× and 1.01× of theirs on trained-like weights, 1.16× and 1.00× on fresh ones). "
           "whole_run.md times a whole run of ours beside SAELens's and dictionary_learning's own trainers (same store, "
           "batches, start weights and steps; a constant learning rate all three trainers can follow)."]
    Path(a.out + ".md").write_text("\n".join(md) + "\n")
    Path(a.out + ".json").write_text(json.dumps(dict(command=md[2], runs=rows, speedup=speedup), indent=1))
    print("\n".join(md))


if __name__ == "__main__":
    main()
