"""Chunked feature-diversity penalty vs the naive full Gram matrix: time and peak memory (CPU).

Usage: python benchmarks/diversity_penalty.py [d_sae] [d_in]
Each configuration runs in its own subprocess so its peak resident memory (ru_maxrss) is its own.
"""
import json, subprocess, sys

CHILD = r'''
import resource, time, json, sys, torch
from sae_tutorial.losses import diversity_penalty
torch.set_num_threads(1)
d_sae, d_in, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
W = torch.randn(d_sae, d_in, requires_grad=True)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if mode == "naive":
    G = W @ W.T; loss = G.abs().sum() - G.diagonal().abs().sum()
else:
    loss = diversity_penalty(W, chunk=int(mode))
loss.backward()
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"mode": mode, "seconds": dt, "extra_peak_MB": (peak - base) / 1024, "loss": loss.item()}))
'''

def main(d_sae=8192, d_in=64):
    rows = []
    for mode in ["naive", "4096", "1024", "256"]:
        out = subprocess.run([sys.executable, "-c", CHILD, str(d_sae), str(d_in), mode], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    gram_mb = d_sae * d_sae * 4 / 2**20
    print(f"d_sae={d_sae}, d_in={d_in}; one float32 Gram matrix = {gram_mb:.0f} MB")
    print("| method | forward+backward (s) | extra peak RSS (MB) | loss |")
    print("|---|---|---|---|")
    for r in rows:
        name = "naive autograd (full Gram)" if r["mode"] == "naive" else f"chunked, chunk={r['mode']}"
        print(f"| {name} | {r['seconds']:.2f} | {r['extra_peak_MB']:.0f} | {r['loss']:.6g} |")

if __name__ == "__main__":
    main(*[int(a) for a in sys.argv[1:3]])
