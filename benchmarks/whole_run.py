#!/usr/bin/env python
"""A whole SAE training run side by side: ours (fast path) vs SAELens's trainer vs dictionary_learning's, on a finished
reproduction's training store, timed run against run.

    python benchmarks/whole_run.py --run runs/smollm2-135m-cpu --threads 1      # after `make reproduce` (cpu preset)

Why: train_throughput.md times single steps (fresh weights, and weights that are already sparse); a ReLU SAE starts
dense (half its latents fire) and our sparse ReLU path engages only once at most 1/8 of f is non-zero, so only a
whole run shows what the fast path gains over the other tools. relu_run.md times a whole run of ours (fast vs plain)
with the reproduction's own schedule; this script puts the other tools' trainers beside ours.

Same for every tool in a pair:
- the start weights: `reproduce.start_sae` (the reproduction's seeded init, b_dec at the data mean);
- the batches, in the same order: the rows `reproduce.epoch_batches` draws (checked equal, batch by batch, before
  any run), gathered in the worker from the store's acts.bin and scaled by the store's normalisation;
- the steps, the learning rate and the L1 coefficient of the reproduction's config, and a schedule all three
  trainers can follow: constant learning rate; L1 coefficient warmed up linearly over the reproduction's
  sparsity warm-up (l1 * (s + 1) / w at step s; SAELens's scheduler is advanced once, see train_throughput.py);
  no dead-latent resampling;
- the maths: ours is configured to follow each tool's convention (train_throughput.CONVENTIONS), and round 0 checks
  the first `--check-steps` losses against the tool's.
Each tool runs in its own interpreter (benchmarks/.venv-other for SAELens and dictionary_learning, as
train_throughput.py; builders and conventions are train_throughput.py's). The trained weights come back as
safetensors and are evaluated here with our metrics (sae_tutorial.metrics.evaluate) on the held-out store.
Runs are interleaved (A B A B ...). Writes benchmarks/whole_run.{md,json}.
"""
from __future__ import annotations

import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import train_throughput as tt                                                           # noqa: E402


# ----------------------------------------------------------------------------------------------
# worker: runs in the tool's interpreter; needs only torch, numpy, safetensors and the tool
# ----------------------------------------------------------------------------------------------
class StoreBatches:
    """Batch i = the store's rows order[i] [batch, d_in], scaled as ActivationStore.get scales them (x * scale)."""

    def __init__(self, acts: torch.Tensor, order: torch.Tensor, scale: float):
        self.acts, self.order, self.scale = acts, order, scale

    def __len__(self): return len(self.order)

    def __getitem__(self, i): return self.acts[self.order[i]] * self.scale


def worker(a) -> dict:
    from safetensors.torch import load_file, save_file
    torch.set_num_threads(a.threads)
    plan = load_file(a.plan)
    d_in, n_rows = int(plan["d_in"]), int(plan["n_rows"])
    acts = torch.from_numpy(np.fromfile(a.acts, dtype=np.float32).reshape(n_rows, d_in))
    batches = StoreBatches(acts, plan["order"][:a.steps], float(plan["scale"]))
    init = load_file(a.init)
    a.batch = batches.order.shape[1]
    res = dict(tool=a.tool, arch=a.arch, convention=a.convention, variant=a.variant, steps=a.steps, batch=a.batch,
               torch=torch.__version__, threads=torch.get_num_threads(), loadavg_start=os.getloadavg()[0])
    built = tt.BUILDERS[a.tool](a, init, "cpu")
    t0, c0 = time.perf_counter(), time.process_time()
    _, times = built.run(batches, a.steps, False, lambda: None)
    res.update(wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0, loadavg_end=os.getloadavg()[0],
               step_s=[t for t, _ in times], versions=built.versions)
    save_file(built.weights(), a.save)
    h = built.history()
    if h: res["history"] = {k: h[k] for k in ("step", "loss", "l0", "mse", "sparsity_coeff")}
    del built
    if a.check_steps:
        res["losses"] = [float(l) for l in tt.BUILDERS[a.tool](a, init, "cpu").run(batches, a.check_steps, True,
                                                                                    lambda: None)[0]]
    return res


# ----------------------------------------------------------------------------------------------
# orchestrator: runs in the project's interpreter
# ----------------------------------------------------------------------------------------------
def batch_order(n_rows: int, batch: int, seed: int, steps: int) -> np.ndarray:
    "[steps, batch] store rows of the batches reproduce.epoch_batches(store, batch, seed) yields, in order."
    out, epoch = [], 0
    while len(out) < steps:
        perm = np.random.default_rng(seed + 1000 * epoch).permutation(n_rows)
        out += [perm[i:i + batch] for i in range(0, n_rows - batch + 1, batch)]
        epoch += 1
    return np.stack(out[:steps])


def first_sparse_step(history: dict, d_sae: int, density: float = 1 / 8):
    """(first step whose f had at most `density` of its entries non-zero, number of such steps): the steps on which
    ReLUSparse took its sparse branch (history.l0 = non-zeros of f / batch; 1/8 is the CPU switch)."""
    hits = [s for s, l in zip(history["step"], history["l0"]) if l / d_sae <= density]
    return (hits[0] if hits else None), len(hits)


def evaluate_weights(path, arch: str, k: int, eval_store) -> dict:
    "Our held-out metrics for weights in our layout, whichever tool trained them."
    from safetensors.torch import load_file
    from sae_tutorial.metrics import evaluate
    from sae_tutorial.sae import SAEConfig, make_sae
    w = load_file(str(path))
    d_in, d_sae = w["W_enc"].shape
    sae = make_sae(SAEConfig(d_in=d_in, expansion_factor=d_sae / d_in, architecture=arch, k=k, fast=False))
    with torch.no_grad():
        for n, v in w.items(): getattr(sae, n).copy_(v)
    r = evaluate(sae, eval_store.batches(4096, shuffle=False))
    return dict(eval_l0=r.l0, eval_explained_variance=r.explained_variance, eval_mse=r.mse, eval_dead_fraction=r.dead_fraction)


def weight_diff(p_ours, p_tool) -> float:
    "||W_dec(ours) - W_dec(tool)|| / ||W_dec(tool)|| after the whole run: how far float32 rounding let the runs drift."
    from safetensors.torch import load_file
    a, b = load_file(str(p_ours))["W_dec"], load_file(str(p_tool))["W_dec"]
    return float((a - b).norm() / b.norm())


def run_job(a, job, paths, rnd, tmp) -> dict:
    tool, arch, conv, variant = job
    save = tmp / f"{arch}_{conv}_{tool}_{variant}_r{rnd}.safetensors"
    cmd = [str(tt.OTHER_PY) if tool != "ours" else sys.executable, str(Path(__file__).resolve()), "--worker",
           "--tool", tool, "--arch", arch, "--convention", conv, "--variant", variant, "--plan", str(paths["plan"]),
           "--acts", str(paths["acts"]), "--init", str(paths[arch]), "--save", str(save), "--steps", str(a.steps),
           "--check-steps", str(a.check_steps if rnd == 0 else 0), "--threads", str(a.threads), "--lr", str(a.lr),
           "--l1", str(a.l1), "--k", str(a.k), "--l1-warmup", str(a.l1_warmup if arch == "relu" else 0)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
               WANDB_MODE="disabled", TQDM_DISABLE="1")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        return dict(tool=tool, arch=arch, convention=conv, variant=variant, round=rnd, error=p.stderr.strip().splitlines()[-5:])
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r.update(round=rnd, weights=str(save))
    return r


def summarise(runs, a, d_sae) -> list[dict]:
    groups: dict = {}
    for r in runs:
        groups.setdefault((r["arch"], r["convention"], r["tool"], r["variant"]), []).append(r)
    rows = []
    for (arch, conv, tool, variant), rs in groups.items():
        ok = sorted((r for r in rs if "error" not in r), key=lambda r: r["round"])
        row = dict(arch=arch, convention=conv, tool=tool, variant=variant, n=len(ok))
        if not ok:
            rows.append({**row, "error": rs[0]["error"]}); continue
        walls = [r["wall_s"] for r in ok]
        r0 = ok[0]
        row.update(walls=walls, wall_s=statistics.median(walls), cpu_s=statistics.median(r["cpu_s"] for r in ok),
                   tokens_per_s=r0["steps"] * r0["batch"] / statistics.median(walls),
                   tokens_per_cpu_s=r0["steps"] * r0["batch"] / statistics.median(r["cpu_s"] for r in ok),
                   losses=r0.get("losses"), versions=r0["versions"], weights=r0["weights"],
                   **{k: r0[k] for k in r0 if k.startswith("eval_")},
                   rounds_agree_ev=max(abs(r["eval_explained_variance"] - r0["eval_explained_variance"]) for r in ok))
        if "history" in r0:
            row["first_sparse_step"], row["sparse_steps"] = first_sparse_step(r0["history"], d_sae[arch]) \
                if arch == "relu" else (0, r0["steps"])
            row["final_train_loss"], row["final_train_l0"] = r0["history"]["loss"][-1], r0["history"]["l0"][-1]
        rows.append(row)
    for o in rows:                                 # ours against the tool whose convention it follows
        t = next((r for r in rows if r["tool"] == o["convention"] and r["arch"] == o["arch"] and "error" not in r), None)
        if o["tool"] != "ours" or "error" in o or t is None: continue
        o["speedup"] = t["wall_s"] / o["wall_s"]
        o["cpu_speedup"] = t["cpu_s"] / o["cpu_s"]
        if o.get("losses") and t.get("losses"):
            o["max_rel_loss_diff"] = max(abs(x - y) / abs(y) for x, y in zip(o["losses"], t["losses"]))
        o["final_W_dec_rel_diff"] = weight_diff(o["weights"], t["weights"])
        p = next((r for r in rows if r["tool"] == "ours" and r["variant"] == "plain" and r["arch"] == o["arch"]
                  and r["convention"] == o["convention"] and "error" not in r), None)
        if p is not None and p is not o:            # the control: ours, fast vs plain path (same maths, other rounding)
            o["final_W_dec_rel_diff_to_plain"] = weight_diff(o["weights"], p["weights"])
    return rows


def render(rows, a, meta) -> str:
    m = meta["machine"]
    loads = meta["loads"]
    archs = a.archs.split(",")
    relu = ("ReLU: L1 coefficient {a.l1} warmed up linearly over the first {a.l1_warmup} steps (l1·(s+1)/w at step s, as "
            "ours and dictionary_learning do it; SAELens's coefficient scheduler, which gives l1·s/w, is advanced by one "
            "step at the start to match); no dead-latent resampling").format(a=a)
    md = ["# A whole training run side by side: ours vs SAELens vs dictionary_learning", "",
          f"Command: `{meta['command']}`", "",
          f"Machine: {m['cpu']}, {m['cores']} cores (shared with other jobs: the 1-minute load average during the "
          f"runs was median {statistics.median(loads):.1f}, max {max(loads):.1f}), {m['mem']} RAM, torch {m['torch']}, "
          f"{a.threads} torch thread(s) per run, CPU. Total wall time {meta['wall_s'] / 60:.1f} min. "
          f"{a.rounds} interleaved round{'s' if a.rounds != 1 else ''} (every run of a round in turn: A B A B ...); the table shows the median "
          "wall time of the rounds, each round's in the next column, so the ratios come from runs made side by side.", "",
          f"Data: {meta['store']} ({meta['n_rows']:,} rows of SmolLM2-135M {meta['hook']}, d_in {meta['d_in']}), "
          f"{a.steps} steps of {meta['batch']} tokens ({a.steps * meta['batch']:,} tokens), the reproduction's batches "
          f"in its order (reproduce.epoch_batches, seed {meta['seed']}: checked equal batch by batch). Start: "
          "reproduce.start_sae (seeded init, b_dec at the data mean), the same weights for every tool. "
          f"d_sae {', '.join(f'{k} {v}' for k, v in meta['d_sae'].items())}.", "",
          f"Schedule (the simplest one all three trainers follow exactly): learning rate {a.lr} constant (no warm-up, "
          "no decay); " + "; ".join(([relu] if "relu" in archs else []) + ([f"TopK: k {a.k}, no AuxK"] if "topk" in archs else []))
          + ". This differs from the reproduction's own schedule (learning-rate warm-up and cosine decay, "
          + ", ".join((["Anthropic resampling"] if "relu" in archs else []) + (["AuxK"] if "topk" in archs else []))
          + ")" + (": relu_run.md times that one for ours, fast vs plain." if "relu" in archs else "."), "",
          "| arch | convention | tool | train wall (s): median (each round) | tokens/s | tokens per CPU-s | "
          "speedup of ours: wall / CPU | first step on the sparse branch (steps on it) | held-out L0 | held-out EV | "
          "first steps' losses: max rel. diff | final W_dec: rel. diff to the tool |",
          "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["arch"], r["convention"], r["tool"] == "ours", r["variant"])):
        name = r["tool"] + (f" ({r['variant']})" if r["tool"] == "ours" else "")
        if "error" in r:
            md.append(f"| {r['arch']} | {r['convention']} | {name} | error: {' / '.join(r['error'])[:150]} |||||||||"); continue
        sp = f"**{r['speedup']:.2f}×** / {r['cpu_speedup']:.2f}×" if "speedup" in r else ""
        fs = (f"{r['first_sparse_step']} ({r['sparse_steps']} of {a.steps})" if r.get("first_sparse_step") is not None
              else ("never" if "sparse_steps" in r else "— (dense)"))
        if r["arch"] == "topk": fs = "— (TopK: every step)" if r["tool"] == "ours" else "— (dense)"
        if r["tool"] == "ours" and r["variant"] == "plain":
            fs = "— (plain path" + (f"; f ≤ 1/8 non-zero from step {r['first_sparse_step']})"
                                    if r.get("first_sparse_step") is not None and r["arch"] == "relu" else ")")
        ld = f"{r['max_rel_loss_diff']:.1e}" if "max_rel_loss_diff" in r else ""
        wd = f"{r['final_W_dec_rel_diff']:.1e}" if "final_W_dec_rel_diff" in r else ""
        if "final_W_dec_rel_diff_to_plain" in r: wd += f" (to ours (plain): {r['final_W_dec_rel_diff_to_plain']:.1e})"
        md.append(f"| {r['arch']} | {r['convention']} | {name} | {r['wall_s']:.1f} ({' / '.join('%.1f' % w for w in r['walls'])}) | "
                  f"{r['tokens_per_s']:,.0f} | {r['tokens_per_cpu_s']:,.0f} | {sp} | {fs} | {r['eval_l0']:.1f} | "
                  f"{r['eval_explained_variance']:.4f} | {ld} | {wd} |")
    md += ["", "Columns: train wall = the trainer's steps alone (building the trainer and evaluating excluded; each step's "
           "batch gather from the in-RAM store included, the same for every tool); tokens/s = steps × batch / median "
           "wall; speedup = the tool's median wall (or CPU) time over ours, in the tool's convention. "
           "First step on the sparse branch: the first step whose f had at most 1/8 of its entries non-zero (where "
           "ReLUSparse switches to the sparse decode and backward on a CPU), and how many steps did. Held-out L0 / EV: "
           "each tool's final weights copied into our SAE and measured with sae_tutorial.metrics.evaluate on the "
           f"held-out store ({meta['eval_rows']:,} rows), round 0 (rounds agree to {meta['rounds_agree']:.1e} in EV). "
           "First steps' losses: ours against the tool over the first "
           f"{a.check_steps} steps from the same weights (float32). Final W_dec: ‖W_dec(ours) − W_dec(tool)‖ / "
           "‖W_dec(tool)‖ after the whole run, how far float32 rounding let the two runs drift apart"
           + ("; in brackets the same for ours' fast path against ours' plain path (SAEConfig(fast=False)), a control: "
              "the same maths by construction (tests/test_fast_pkg.py), other rounding."
              if any(r["tool"] == "ours" and r["variant"] == "plain" for r in rows) else
              ". The drift is rounding, not different maths: whole_run_control.md (`--variants fast,plain`) runs ours' "
              "plain path beside them, and ours' fast and plain paths drift apart as far."), "",
           "Conventions (ours follows the tool's in each pair):", ""]
    md += [f"- **{k}**: {v['doc']}" for k, v in tt.CONVENTIONS.items()]
    return "\n".join(md) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for k in ("--tool", "--convention", "--variant", "--plan", "--acts", "--init", "--save"):
        ap.add_argument(k, help=argparse.SUPPRESS)
    ap.add_argument("--arch", default="relu", help=argparse.SUPPRESS)
    ap.add_argument("--run", default=str(ROOT / "runs" / "smollm2-135m-cpu"), help="a finished reproduction's folder")
    ap.add_argument("--archs", default="relu", help="relu and/or topk (TopK does the same work from any weights)")
    ap.add_argument("--tools", default="saelens,dictionary_learning")
    ap.add_argument("--steps", type=int, default=None, help="default: the reproduction's steps")
    ap.add_argument("--lr", type=float, default=None, help="default: the reproduction's lr")
    ap.add_argument("--l1", type=float, default=None, help="default: the reproduction's l1_coeff")
    ap.add_argument("--l1-warmup", type=int, default=None, help="default: the reproduction's (steps // 10)")
    ap.add_argument("--k", type=int, default=None, help="TopK k; default: the reproduction's")
    ap.add_argument("--variants", default="fast", help="ours: fast (the default path) and/or plain (SAEConfig(fast=False)), "
                    "a control: same maths as fast, other float32 rounding")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--check-steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "whole_run"), help="writes OUT.md and OUT.json")
    ap.add_argument("--render", metavar="JSON", help="only rewrite OUT.md from a saved results JSON")
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a)))
        return
    if a.render:
        d = json.loads(Path(a.render).read_text())
        Path(a.out + ".md").write_text(render(d["rows"], argparse.Namespace(**d["args"]), d))
        return

    from safetensors.torch import save_file
    from sae_tutorial.reproduce import ReproConfig, SAESpec, epoch_batches, load_store, start_sae
    run = Path(a.run)
    if not (run / "config.json").exists() or not (run / "data_train" / "store").exists():
        sys.exit(f"{run} is not a finished reproduction (config.json, data_train/store); run `make reproduce` first.")
    if not tt.OTHER_PY.exists():
        sys.exit(f"{tt.OTHER_PY} not found: run `bash benchmarks/other_tools/setup.sh` first "
                 "(or point SAE_BENCH_OTHER_PY at a python that has sae_lens and dictionary_learning)")
    torch.set_num_threads(a.threads)
    d = json.loads((run / "config.json").read_text())
    cfg = ReproConfig.from_dict(d)
    a.steps = a.steps or cfg.steps
    a.lr = a.lr if a.lr is not None else cfg.relu.lr
    a.l1 = a.l1 if a.l1 is not None else cfg.relu.l1_coeff
    a.l1_warmup = a.l1_warmup if a.l1_warmup is not None else max(1, cfg.steps // 10)
    a.k = a.k or cfg.topk.k
    archs, tools = a.archs.split(","), a.tools.split(",")
    store_dir = run / "data_train" / "store"
    store, eval_store = load_store(store_dir), load_store(run / "data_eval" / "store")
    if store.dtype != "float32":
        sys.exit(f"{store_dir} holds {store.dtype} activations; this benchmark reads float32 acts.bin directly.")

    tmp = Path(tempfile.mkdtemp(prefix="sae_whole_run_"))
    order = batch_order(store.n_rows, cfg.batch_size, cfg.seed, a.steps)
    ref = epoch_batches(store, cfg.batch_size, cfg.seed)           # the reproduction's batches (start_sae's seed)
    acts = torch.from_numpy(np.fromfile(store_dir / "acts.bin", dtype=np.float32).reshape(store.n_rows, store.d_in))
    sb = StoreBatches(acts, torch.from_numpy(order), float(store.scale))   # what the workers will draw
    for i in range(a.steps):
        if not torch.equal(next(ref), sb[i]):
            sys.exit(f"batch {i}: the gathered rows differ from reproduce.epoch_batches; batch_order is out of date.")
    del acts, sb, ref
    paths = dict(plan=tmp / "plan.safetensors", acts=store_dir / "acts.bin")
    save_file(dict(order=torch.from_numpy(order), scale=torch.tensor(float(store.scale), dtype=torch.float64),
                   d_in=torch.tensor(store.d_in), n_rows=torch.tensor(store.n_rows)), str(paths["plan"]))
    d_sae = {}
    for arch in archs:
        sae, _, _ = start_sae(SAESpec(arch, arch, cfg.expansion, cfg.seed, True), replace(cfg, topk=replace(cfg.topk, k=a.k)), store, fast=True)
        d_sae[arch] = sae.cfg.d_sae
        paths[arch] = tmp / f"init_{arch}.safetensors"
        save_file(tt._ours_layout(sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec), str(paths[arch]))

    variants = a.variants.split(",")
    if bad := sorted(set(variants) - set(tt.VARIANTS)): sys.exit(f"unknown --variants {bad}; use {','.join(tt.VARIANTS)}")
    jobs = [j for arch in archs for conv in tools
            for j in [(conv, arch, conv, "plain")] + [("ours", arch, conv, v) for v in variants]]
    cmd = "python " + " ".join([str(Path(__file__).relative_to(ROOT))] + sys.argv[1:])
    runs, t0 = [], time.time()
    for rnd in range(a.rounds):
        for job in jobs:
            r = run_job(a, job, paths, rnd, tmp)
            if "error" not in r: r.update(evaluate_weights(r["weights"], job[1], a.k, eval_store))
            runs.append(r)
            print(f"round {rnd} {job}: " + (str(r["error"]) if "error" in r else
                  f"{r['wall_s']:.1f} s, EV {r['eval_explained_variance']:.4f}, L0 {r['eval_l0']:.1f}, "
                  f"load {r['loadavg_start']:.1f}"), file=sys.stderr, flush=True)
            Path(a.out + ".partial.json").write_text(json.dumps(dict(command=cmd, runs=runs)))
    rows = summarise(runs, a, d_sae)
    ok = [r for r in runs if "error" not in r]
    meta = dict(command=cmd, machine=tt.machine(), wall_s=time.time() - t0, store=str(store_dir), n_rows=store.n_rows,
                hook=cfg.hook, d_in=store.d_in, batch=cfg.batch_size, seed=cfg.seed, d_sae=d_sae, eval_rows=eval_store.n_rows,
                loads=[x for r in ok for x in (r["loadavg_start"], r["loadavg_end"])] or [float("nan")],
                rounds_agree=max([r.get("rounds_agree_ev", 0.0) for r in rows] or [0.0]))
    md = render(rows, a, meta)
    Path(a.out + ".md").write_text(md)
    for r in runs: r.pop("weights", None)
    for r in rows: r.pop("weights", None)
    Path(a.out + ".json").write_text(json.dumps(dict(meta, args=vars(a), rows=rows, runs=runs), indent=1))
    Path(a.out + ".partial.json").unlink(missing_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    print(md)


if __name__ == "__main__":
    main()
