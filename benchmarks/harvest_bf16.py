#!/usr/bin/env python
"""What harvesting in bfloat16 would buy and cost, before anyone makes it a default.

    python benchmarks/harvest_bf16.py --run runs/smollm2-135m-cpu      # after `make reproduce`

The same contexts are harvested twice at the reproduction's hook and batch (16 contexts × 128 tokens), once with
SmolLM2-135M in float32 (today's default) and once in bfloat16, interleaved over `--rounds` rounds (seconds per
round: wall and this process's CPU time). The two stores' shared rows are compared (relative error per row), and the
run's trained TopK SAE, which saw float32 activations, encodes both: explained variance against each store's own
rows and against the float32 rows, and how many of each row's k active latents the two encodings share.
This measures what the SAE would be fed; it does not train an SAE on bfloat16 activations (that, and its delta CE,
is the measurement a default change would still need).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from sae_tutorial.activations import HarvestConfig, harvest_activations, tokenize_contexts
from sae_tutorial.corpus import build_corpus
from sae_tutorial.lm import load_lm
from sae_tutorial.metrics import explained_variance
from sae_tutorial.sae import SAE


def harvest(model, contexts, hook: str):
    "(store, wall s, CPU s) of one harvest in RAM."
    t0, c0 = time.perf_counter(), time.process_time()
    store = harvest_activations(model, contexts, HarvestConfig(hook=hook, batch_size=16, progress=False))
    return store, time.perf_counter() - t0, time.process_time() - c0


def rows_by_position(store) -> dict:
    "(context, position) -> row index of every kept row."
    return {(int(c), int(p)): i for i, (c, p) in enumerate(store.rows.tolist())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/smollm2-135m-cpu", help="a finished reproduction (its TopK SAE is used)")
    ap.add_argument("--contexts", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    sae = SAE.load(Path(a.run)/"saes"/"topk").eval()
    hook = sae.cfg.hook
    models = {dt: load_lm(dtype=dt) for dt in ("float32", "bfloat16")}
    tok = models["float32"].tokenizer
    contexts = tokenize_contexts(build_corpus(total_chars=300_000), tok, ctx_len=128, n_contexts=a.contexts)
    times = {dt: {"wall": [], "cpu": []} for dt in models}
    stores = {}
    harvest(models["float32"].model, contexts, hook)                      # warm-up
    for _ in range(a.rounds):
        for dt, lm in models.items():
            stores[dt], w, c = harvest(lm.model, contexts, hook)
            times[dt]["wall"].append(w); times[dt]["cpu"].append(c)
    f32, b16 = stores["float32"], stores["bfloat16"]
    ia, ib = rows_by_position(f32), rows_by_position(b16)
    shared = sorted(set(ia) & set(ib))
    xa = f32.get([ia[k] for k in shared], normalize=False)
    xb = b16.get([ib[k] for k in shared], normalize=False)
    rel = ((xb - xa).norm(dim=1) / xa.norm(dim=1)).sort().values
    with torch.no_grad():
        oa, ob = sae(xa), sae(xb)
        top_a, top_b = oa.f.topk(sae.cfg.k, dim=1).indices, ob.f.topk(sae.cfg.k, dim=1).indices
    overlap = torch.tensor([len(set(p.tolist()) & set(q.tolist())) / sae.cfg.k for p, q in zip(top_a, top_b)])
    res = {
        "machine": {"cores": os.cpu_count(), "threads": a.threads, "torch": torch.__version__,
                    "loadavg": os.getloadavg()},
        "tokens": int(contexts.tokens.numel()), "rounds": a.rounds, "times_s": times,
        "speedup_wall_median": statistics.median(times["float32"]["wall"]) / statistics.median(times["bfloat16"]["wall"]),
        "speedup_cpu_median": statistics.median(times["float32"]["cpu"]) / statistics.median(times["bfloat16"]["cpu"]),
        "kept_rows": {"float32": f32.n_rows, "bfloat16": b16.n_rows, "shared": len(shared)},
        "relative_error": {"median": float(rel[len(rel) // 2]), "p90": float(rel[int(0.9 * len(rel))]),
                           "max": float(rel[-1])},
        "sae_ev": {"float32 rows": explained_variance(xa, oa.x_hat), "bfloat16 rows": explained_variance(xb, ob.x_hat),
                   "bfloat16 input, float32 target": explained_variance(xa, ob.x_hat)},
        "topk_overlap": {"mean": float(overlap.mean()), "min": float(overlap.min())},
    }
    print(json.dumps(res, indent=1))
    if a.json: Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    sys.exit(main())
