"""What makes two SAEs trained from independent seeds agree: learning rate, k, architecture.

Trains two SAEs (seeds 11 and 22: their own initialisation and data order) on the training store of a cpu-preset
run, holding its last 8,192 rows out for explained variance, and reports the share of latents matched one-to-one
(Hungarian) at cos > 0.5 / 0.7 / 0.9, MMCS, the mean decoder-row cosine with its own initialisation, and the share
matched at each quarter of training. Two random dictionaries of the same shape match 0 % at 0.7 (MMCS ~0.14).

    make reproduce                      # or: sae-tutorial reproduce --preset cpu --stop-after data
    .venv/bin/python benchmarks/seed_agreement.py topk 4 64 8e-3 2000 0 >> benchmarks/seed_agreement.jsonl
    # args: architecture expansion k lr steps l1_coeff [store folder]

Results: benchmarks/seed_agreement.md (each row one call, ~3-10 min on 2 CPU cores).
"""
import json, sys, time
import numpy as np
import torch
from sae_tutorial.reproduce import ReproConfig, ReluSettings, TopKSettings, SAESpec, start_sae, epoch_batches, load_store
from sae_tutorial.analysis import agreement
from sae_tutorial.train import train
from sae_tutorial.metrics import evaluate


def unit(W): return W / W.norm(dim=1, keepdim=True)

def agree(A, B):
    "The reproduction's own `agreement` (one-to-one, Hungarian), in the short keys of seed_agreement.jsonl."
    a = agreement(A, B)
    return dict(mmcs=round(a["mmcs"], 3), h07=round(a["share_0.7"], 3), h05=round(a["share_0.5"], 3),
                h09=round(a["share_0.9"], 3))

def main(arch, exp, k, lr, steps, l1, store_dir="runs/smollm2-135m-cpu/data_train/store"):
    torch.set_num_threads(2)
    exp, k, lr, steps, l1 = float(exp), int(k), float(lr), int(steps), float(l1)
    store = load_store(store_dir)
    ev_x = store.get(np.arange(store.n_rows - 8192, store.n_rows))            # held out of the training rows
    n = store.n_rows - 8192
    store._acts = store._acts[:n]; store.n_rows = n; store.rows = store.rows[:n]
    cfg = ReproConfig(preset="cpu", relu=ReluSettings(lr=lr, l1_coeff=l1), topk=TopKSettings(k=k, lr=lr), steps=steps,
                      progress=False, curve_points=0).resolved()
    snap_at = [steps * i // 4 for i in range(1, 5)]
    t0, final, inits, evs, snaps = time.time(), [], [], [], []
    for seed in (11, 22):
        sae, lc, tc = start_sae(SAESpec(f"s{seed}", arch, exp, seed, False), cfg, store)
        W0, sn = sae.W_dec.detach().clone(), {}
        def on_batch(i):
            if i in snap_at: sn[i] = sae.W_dec.detach().clone()
        train(sae, epoch_batches(store, cfg.batch_size, seed, on_batch), lc, tc)
        sn[steps] = sae.W_dec.detach().clone()
        r = evaluate(sae, iter([ev_x]))
        final.append(unit(sae.W_dec.detach())); inits.append(unit(W0))
        evs.append((round(r.explained_variance, 4), round(r.l0, 1), round(r.dead_fraction, 4)))
        snaps.append({s: unit(W) for s, W in sn.items()})
    curve = {s: agree(snaps[0][s], snaps[1][s])["h07"] for s in sorted(snaps[0]) if s in snaps[1]}
    out = dict(arch=arch, exp=exp, k=k, lr=lr, steps=steps, l1=l1, rows=store.n_rows, secs=round(time.time() - t0),
               evs=evs, cos_init=[round(float((W * W0).sum(1).mean()), 3) for W, W0 in zip(final, inits)],
               **agree(final[0], final[1]), curve=curve)
    print(json.dumps(out), flush=True)

if __name__ == "__main__": main(*sys.argv[1:])
