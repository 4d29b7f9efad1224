#!/usr/bin/env python
"""A reproduction whose training activations are harvested in bfloat16, everything else as in a float32 run.

    python benchmarks/bf16_run.py --run runs/smollm2-135m-cpu --out runs/smollm2-135m-cpu-bf16train
    sae-tutorial reproduce --preset cpu --run-dir runs/smollm2-135m-cpu-bf16train     # trains, evaluates, analyses
    python benchmarks/bf16_run.py --compare runs/smollm2-135m-cpu,runs/smollm2-135m-cpu-bf16train

The first call reads the float32 run's config and copies its held-out data (`data_eval`, `data_source`: float32
activations, so both runs are scored on the same rows) and harvests `data_train` with SmolLM2-135M loaded in
bfloat16, through the reproduction's own `build_data` and under the same stage key, so `sae-tutorial reproduce`
takes it as done and trains the same SAEs (same seeds, same data order) on it; delta CE is measured with the
float32 model as in every run. `--compare` prints the main SAEs' held-out numbers side by side.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from sae_tutorial.lm import load_lm
from sae_tutorial.reproduce import ReproConfig, build_data, data_key, run_stage


def prepare(run: Path, out: Path) -> None:
    cfg = ReproConfig.from_dict(json.loads((run/"config.json").read_text()))
    out.mkdir(parents=True, exist_ok=False)                # `reproduce` writes its own config.json there
    for split in ("eval", "source"):
        if (run/f"data_{split}").is_dir(): shutil.copytree(run/f"data_{split}", out/f"data_{split}")
    model, tok = load_lm(cfg.model, dtype="bfloat16")
    t0 = time.time()
    run_stage(out/"data_train", data_key(cfg, "train"), lambda tmp: build_data(cfg, "train", model, tok, tmp, print), print)
    print(f"data_train harvested in bfloat16 in {time.time() - t0:.0f} s; now: sae-tutorial reproduce --preset "
          f"{cfg.preset} --run-dir {out}")


def compare(runs: list[Path]) -> None:
    rows = {}
    for r in runs:
        m = json.loads((r/"metrics.json").read_text())
        info = json.loads((r/"data_train"/"info.json").read_text())
        rows[r.name] = (m, info)
    print("| run | harvest s (tokens/s) | SAE | EV held-out | L0 | dead | delta CE (nats) | EV, held-out source | "
          "delta CE, held-out source |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for name, (m, info) in rows.items():
        for sae in ("topk", "relu", "topk_seed1", "relu_seed1"):
            if sae not in m: continue
            e, src = m[sae], m[sae].get("held_out_source", {})
            print(f"| {name} | {info['seconds']:.0f} ({info['tokens_per_s']:,.0f}) | {sae} | {_g(e, 'explained_variance')} | "
                  f"{_g(e, 'l0', 1)} | {_g(e, 'dead_fraction')} | {_g(e, 'delta_ce')} | {_g(src, 'explained_variance')} | "
                  f"{_g(src, 'delta_ce')} |")


def _g(d: dict, key: str, digits: int = 3) -> str:
    "d[key] with `digits` decimals, or '-' where the run did not measure it."
    v = d.get(key)
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else "-"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/smollm2-135m-cpu")
    ap.add_argument("--out", default="runs/smollm2-135m-cpu-bf16train")
    ap.add_argument("--compare", default=None, help="comma-separated run folders to compare")
    a = ap.parse_args()
    if a.compare: return compare([Path(p) for p in a.compare.split(",")])
    prepare(Path(a.run), Path(a.out))


if __name__ == "__main__":
    sys.exit(main())
