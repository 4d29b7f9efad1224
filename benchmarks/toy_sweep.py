"""Time a sweep of nbs/01_toy_models.ipynb (item 3, or item 4 with --sweep phase_diagram): one batched program vs a Python loop over settings.

    python benchmarks/toy_sweep.py                      # sizes of the current budget (SAE_TUTORIAL_BUDGET, default cpu)
    python benchmarks/toy_sweep.py --steps 300 --loop-subset 3 --out benchmarks/toy_sweep.json
    SAE_TUTORIAL_BUDGET=gpu python benchmarks/toy_sweep.py --device cuda --steps 1000 --out toy_gpu.json   # a GPU

Both sides do the same work per setting: a ToyModel (n features, m dims, one instance per feature probability),
AdamW, fresh batches of `batch_size`, `steps` steps. The batched side trains all settings as one model with the
instance dimension first; the loop side trains one single-instance model per setting, one after another.
By default both are timed for `--steps` steps and extrapolated linearly to the budget's step count (the per-step cost
is constant), and the loop is timed on `--loop-subset` settings and scaled to all of them. Wall time and process
CPU time are both reported, because the machine may be shared. One short batched and one single-instance training
run go first as a warm-up: the first training call of a process costs ~1.6 s on the CPU, once (measured 2026-11-26;
the CPU rows of toy_sweep.md were timed before this warm-up, so their batched side carries that cost). With
--device cuda both sides run on the GPU, the clock is read after torch.cuda.synchronize(), and the CPU-time column
counts the host's work of launching the kernels.
"""
from __future__ import annotations
import argparse, json, math, os, platform, time
import torch
from sae_tutorial.core import budget, per_budget
from sae_tutorial.toy import ToyConfig, ToyModel, train_toy, dimensionality_sweep_sizes, toy_train_sizes

def sync(device):
    if str(device).startswith("cuda"): torch.cuda.synchronize()

def timed(fn, device="cpu"):
    sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - w0, time.process_time() - c0

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300, help="steps actually timed (scaled to the budget's steps)")
    ap.add_argument("--loop-subset", type=int, default=3, help="settings the loop is timed on (scaled to all)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these small models on a shared machine)")
    ap.add_argument("--sweep", default="dimensionality", choices=["dimensionality", "phase_diagram"],
                    help="dimensionality: item 3 (few large instances); phase_diagram: item 4 (many tiny instances, n=2, m=1)")
    ap.add_argument("--n", type=int, default=None, help="override n (item 3 only), e.g. the paper-size run --n 200 --m 20 --settings 20 --budget-steps 10000")
    ap.add_argument("--m", type=int, default=None)
    ap.add_argument("--settings", type=int, default=None)
    ap.add_argument("--budget-steps", type=int, default=None, help="override the step count the timings are scaled to")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (both sides run there)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.sweep == "dimensionality":
        s = dimensionality_sweep_sizes()
        n, m, G = a.n or s["n"], a.m or s["m"], a.settings or s["n_settings"]
        p = torch.logspace(0, math.log10(0.03), G)
    else:                                                   # the phase-diagram grid x copies, as run_phase_diagram trains it
        s = toy_train_sizes()
        n, m = 2, 1
        G = per_budget(8, 12, 20) * per_budget(7, 11, 19) * per_budget(2, 2, 4)
        p = torch.logspace(0, -2, G)
    full_steps, bs, dev = a.budget_steps or s["steps"], s["batch_size"], a.device
    scale = full_steps / a.steps

    def batched():
        model = ToyModel(ToyConfig(n, m, G, feature_probability=p), device=dev, seed=0)
        train_toy(model, a.steps, bs, s["lr"], seed=0)
    def loop():
        for g in range(a.loop_subset):
            model = ToyModel(ToyConfig(n, m, 1, feature_probability=float(p[g])), device=dev, seed=g)
            train_toy(model, a.steps, bs, s["lr"], seed=g)

    timed(lambda: ToyModel(ToyConfig(n, m, 2, 0.1), device=dev, seed=0), dev)   # warm-up imports/allocations
    for inst in (G, 1):       # a first training call costs ~1.6 s once per process on the CPU (more on a GPU: CUDA
        train_toy(ToyModel(ToyConfig(n, m, inst, 0.1), device=dev, seed=0), 20, bs, s["lr"], seed=0)   # context)
    bw, bc = timed(batched, dev)
    lw, lc = timed(loop, dev)
    lw, lc = lw * G / a.loop_subset, lc * G / a.loop_subset
    res = dict(sweep=a.sweep, budget=budget(), n=n, m=m, settings=G, batch_size=bs, steps_timed=a.steps, steps_budget=full_steps,
               loop_settings_timed=a.loop_subset, threads=a.threads, machine=f"{platform.machine()}, {os.cpu_count()} cores",
               device=dev, gpu=torch.cuda.get_device_name(0) if dev.startswith("cuda") else None,
               torch=torch.__version__,
               batched_wall_s=bw * scale, batched_cpu_s=bc * scale, loop_wall_s=lw * scale, loop_cpu_s=lc * scale,
               speedup_wall=lw / bw, speedup_cpu=lc / bc,
               batched_ms_per_step=1000 * bw / a.steps, loop_ms_per_step_per_setting=1000 * lw / G / a.steps,
               load_average=os.getloadavg())
    print(f"{a.sweep} sweep on {res['gpu'] or dev} at budget {res['budget']}: n={n}, m={m}, {G} settings, batch {bs}, {full_steps} steps "
          f"(timed {a.steps} steps, loop timed on {a.loop_subset}/{G} settings, scaled linearly)")
    print("| program | wall s | CPU s |\n|---|---|---|")
    print(f"| batched (one model, instance dim first) | {res['batched_wall_s']:.0f} | {res['batched_cpu_s']:.0f} |")
    print(f"| Python loop over settings | {res['loop_wall_s']:.0f} | {res['loop_cpu_s']:.0f} |")
    print(f"speed-up: {res['speedup_wall']:.1f}x wall, {res['speedup_cpu']:.1f}x CPU; load average {res['load_average']}")
    if a.out:
        with open(a.out, "w") as f: json.dump(res, f, indent=1)

if __name__ == "__main__":
    main()
