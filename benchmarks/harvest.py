"""Harvesting speed and memory: sae_tutorial.activations against a plain full-forward `run_with_cache`.

    python benchmarks/harvest.py --speed-contexts 64 --batch 32 --rounds 3 --disk-tokens 0   # the speed comparison
    python benchmarks/harvest.py --disk-tokens 1000000 --speed-contexts 0   # the full 1M-token store (~1.2 GB)

1. Throughput, float32, the same contexts and batch for every variant, `--rounds` interleaved repeats in one process
   (min and median): `model.run_with_cache(tokens, names_filter=hook)` over the whole model (logits included), and
   `harvest_activations` (RAM store) with `fast=False` (run_with_cache, stop_at_layer) and `fast=True` (the plain
   Hugging Face blocks). Where the time goes: the forward passes alone (run_with_cache to the hook's block; the
   plain blocks with the bridge's eager attention and with sdpa). Target: harvest >= 2.3x the full run_with_cache.
   Also checks on the real model that the fast path's activations equal run_with_cache's (max abs difference).
2. A disk store in float16: peak resident memory (RSS, sampled every 50 ms from /proc) while harvesting and
   while reading every row back in shuffled batches, and the file size. Target: RSS bounded by the batch size,
   not by the number of stored tokens.
Prints markdown rows and writes `--json`; results for the dev machine are in benchmarks/harvest.md.
"""
from __future__ import annotations
import argparse, json, os, platform, shutil, statistics, tempfile, threading, time
import torch
from sae_tutorial.lm import load_lm
from sae_tutorial.corpus import build_corpus
from sae_tutorial.activations import HarvestConfig, harvest_activations, hook_layer, plain_block_reader, tokenize_contexts

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

def compare(model, contexts, hook, batch, rounds):
    "Seconds per variant over `contexts`, `rounds` interleaved repeats; and the fast path's max abs difference."
    toks, stop = contexts.tokens, hook_layer(hook) + 1
    batches = [toks[i:i + batch] for i in range(0, len(toks), batch)]
    eager, sdpa = plain_block_reader(model, hook), plain_block_reader(model, hook, attn="sdpa")
    def forwards(f):
        def run():
            with torch.inference_mode():
                for tb in batches: f(tb)
        return run
    variants = {
        "full run_with_cache": forwards(lambda tb: model.run_with_cache(tb, names_filter=hook)),
        "harvest fast=False": lambda: harvest_activations(model, contexts, HarvestConfig(hook=hook, batch_size=batch, progress=False, fast=False)),
        "harvest fast=True": lambda: harvest_activations(model, contexts, HarvestConfig(hook=hook, batch_size=batch, progress=False, fast=True)),
        "forward: run_with_cache to the block": forwards(lambda tb: model.run_with_cache(tb, names_filter=hook, stop_at_layer=stop)),
        "forward: plain blocks, eager": forwards(eager),
        "forward: plain blocks, sdpa": forwards(sdpa),
    }
    with torch.inference_mode():
        want = model.run_with_cache(batches[0], names_filter=hook)[1][hook]
        diff = {"eager": float((eager(batches[0]) - want).abs().max()), "sdpa": float((sdpa(batches[0]) - want).abs().max()),
                "max_abs_value": float(want.abs().max())}
    variants["harvest fast=True"]()                                           # warm-up (allocator, first-call costs)
    times, cpu = {k: [] for k in variants}, {k: [] for k in variants}
    for r in range(rounds):
        for k, f in variants.items():
            t0, c0 = time.perf_counter(), time.process_time(); f()
            times[k].append(time.perf_counter() - t0); cpu[k].append(time.process_time() - c0)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), flush=True)
    return times, cpu, diff

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hook", default="blocks.15.hook_resid_post")
    ap.add_argument("--batch", type=int, default=32, help="contexts per forward pass")
    ap.add_argument("--ctx-len", type=int, default=128)
    ap.add_argument("--speed-contexts", type=int, default=64, help="contexts per speed measurement (0: skip)")
    ap.add_argument("--disk-tokens", type=int, default=100_000, help="tokens in the fp16 disk store (0: skip)")
    ap.add_argument("--read-batch", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repeats of the speed comparison")
    ap.add_argument("--json", default=None, help="write the measurements here (default: none)")
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    corpus = build_corpus()
    rows, out = [], {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
                     "torch": torch.__version__, "threads": torch.get_num_threads(), "argv": vars(a)}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.1f}")
    if a.speed_contexts:
        model, tok = load_lm(device="cpu", dtype="float32")
        c = tokenize_contexts(corpus, tok, a.ctx_len, a.speed_contexts)
        load0 = os.getloadavg()[0]
        times, cpu, diff = compare(model, c, a.hook, a.batch, a.rounds)
        n, full = c.tokens.numel(), times["full run_with_cache"]
        out["speed"] = dict(tokens=n, batch=a.batch, ctx_len=a.ctx_len, rounds=a.rounds, seconds=times, cpu_seconds=cpu, max_abs_diff=diff,
                            load_average=[load0, os.getloadavg()[0]])
        fc = cpu["full run_with_cache"]
        rows.append("| variant | min s | median s | tok/s (min time) | full run_with_cache / this: min; median; CPU time (min) |")
        for k, v in times.items():
            rows.append(f"| {k} | {min(v):.2f} | {statistics.median(v):.2f} | {n / min(v):,.0f} | "
                        f"**{min(full) / min(v):.2f}×**; {statistics.median(full) / statistics.median(v):.2f}×; "
                        f"{min(fc) / min(cpu[k]):.2f}× |")
        rows.append(f"max |fast - run_with_cache| on {a.batch}×{a.ctx_len} tokens: eager {diff['eager']:.3g}, "
                    f"sdpa {diff['sdpa']:.3g} (largest |activation| {diff['max_abs_value']:,.0f})")
        print("\n".join(rows), flush=True)
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
    if a.json:
        with open(a.json, "w") as f: json.dump(out, f, indent=1)

if __name__ == "__main__": main()
