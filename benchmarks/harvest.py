"""Harvesting speed and memory: sae_tutorial.activations against a plain full-forward `run_with_cache`.

    python benchmarks/harvest.py                      # speed (fp32 + bf16) and a 100k-token fp16 disk store
    python benchmarks/harvest.py --disk-tokens 1000000 --speed-contexts 0   # the full 1M-token store (~1.2 GB)

1. Throughput: tokens/s of `harvest_activations` (stop_at_layer, sink masking, RAM store) and of
   `model.run_with_cache(tokens, names_filter=hook)` (the whole model, logits included) on the same contexts,
   at the same batch size and model dtype. Target: harvest >= 1.2x.
2. A disk store in float16: peak resident memory (RSS, sampled every 50 ms from /proc) while harvesting and
   while reading every row back in shuffled batches, and the file size. Target: RSS bounded by the batch size,
   not by the number of stored tokens.
Prints a markdown table; results for the dev machine are in benchmarks/harvest.md.
"""
from __future__ import annotations
import argparse, os, platform, shutil, tempfile, threading, time
import torch
from sae_tutorial.lm import load_lm
from sae_tutorial.corpus import build_corpus
from sae_tutorial.activations import HarvestConfig, harvest_activations, tokenize_contexts

def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"): return int(line.split()[1]) / 1024
    return float("nan")

class PeakRSS:
    "Context manager sampling RSS every `dt` seconds; `.peak` in MB."
    def __init__(self, dt=0.05): self.dt, self.peak, self._stop = dt, 0.0, threading.Event()
    def _run(self):
        while not self._stop.is_set(): self.peak = max(self.peak, rss_mb()); time.sleep(self.dt)
    def __enter__(self): self.peak = rss_mb(); self._t = threading.Thread(target=self._run, daemon=True); self._t.start(); return self
    def __exit__(self, *a): self._stop.set(); self._t.join(); self.peak = max(self.peak, rss_mb())

def speed(model, contexts, hook, batch, dtype_name):
    toks = contexts.tokens
    n = toks.numel()
    cfg = HarvestConfig(hook=hook, batch_size=batch, progress=False)
    harvest_activations(model, tokenize_contexts_slice(contexts, batch), cfg)           # warm-up
    t0 = time.perf_counter(); harvest_activations(model, contexts, cfg); t_h = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(toks), batch): model.run_with_cache(toks[i:i + batch], names_filter=hook)
    t_f = time.perf_counter() - t0
    return n / t_h, n / t_f

def tokenize_contexts_slice(c, k):
    return type(c)(c.tokens[:k], c.doc_index[:k], c.doc_sources)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hook", default="blocks.15.hook_resid_post")
    ap.add_argument("--batch", type=int, default=16, help="contexts per forward pass")
    ap.add_argument("--ctx-len", type=int, default=128)
    ap.add_argument("--speed-contexts", type=int, default=64, help="contexts per speed measurement (0: skip)")
    ap.add_argument("--disk-tokens", type=int, default=100_000, help="tokens in the fp16 disk store (0: skip)")
    ap.add_argument("--read-batch", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    corpus = build_corpus()
    rows = []
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.1f}")
    if a.speed_contexts:
        for dt in ("float32", "bfloat16"):
            model, tok = load_lm(device="cpu", dtype=dt)
            c = tokenize_contexts(corpus, tok, a.ctx_len, a.speed_contexts)
            h, f = speed(model, c, a.hook, a.batch, dt)
            rows.append(f"| speed | {dt} | {a.batch}×{a.ctx_len} | {c.tokens.numel():,} | harvest {h:,.0f} tok/s | "
                        f"full run_with_cache {f:,.0f} tok/s | **{h / f:.2f}×** |")
            print(rows[-1], flush=True)
            del model
    if a.disk_tokens:
        model, tok = load_lm(device="cpu", dtype="float32")
        n_ctx = -(-a.disk_tokens // a.ctx_len)
        c = tokenize_contexts(corpus, tok, a.ctx_len, n_ctx)
        base = rss_mb()
        path = os.path.join(tempfile.mkdtemp(dir=os.environ.get("BENCH_DIR")), "store")
        with PeakRSS() as p:
            t0 = time.perf_counter()
            s = harvest_activations(model, c, HarvestConfig(hook=a.hook, batch_size=a.batch, store="disk", path=path,
                                                            dtype="float16", progress=True))
            t_h = time.perf_counter() - t0
        size = os.path.getsize(os.path.join(path, "acts.bin"))
        with PeakRSS() as q:
            t0 = time.perf_counter(); n = 0
            for x in s.batches(a.read_batch): n += len(x)
            t_r = time.perf_counter() - t0
        rows.append(f"| disk fp16 | float32 model | {a.batch}×{a.ctx_len} | {c.tokens.numel():,} tokens → {len(s):,} rows, "
                    f"{size / 1e9:.3f} GB | harvest {c.tokens.numel() / t_h:,.0f} tok/s, RSS {base:,.0f} MB before → peak {p.peak:,.0f} MB | "
                    f"read {n / t_r:,.0f} rows/s in batches of {a.read_batch}, peak RSS {q.peak:,.0f} MB | "
                    f"1M tokens ≈ {size / len(s) * 1e6 * len(s) / c.tokens.numel() / 1e9:.2f} GB, "
                    f"≈ {1e6 / (c.tokens.numel() / t_h) / 60:.0f} min at this rate |")
        print(rows[-1], flush=True)
        shutil.rmtree(os.path.dirname(path))
    print("\n".join(rows))

if __name__ == "__main__": main()
