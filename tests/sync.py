"""Keep notebooks, exported modules and README.md in step.

    python tests/sync.py check    # fail if nbdev-clean/nbdev-export change anything, a module has no
                                  # notebook, or README.md differs from nbs/index.ipynb
    python tests/sync.py readme   # regenerate README.md from nbs/index.ipynb (nbdev-readme needs Quarto)

`make test` runs `check` first. Nothing here is part of the installed package.
"""
from __future__ import annotations
import hashlib, json, re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS, LIB = ROOT/"nbs", ROOT/"sae_tutorial"
GENERATED = {"__init__.py", "_modidx.py"}

def _snapshot() -> dict[str, str]:
    files = [*NBS.rglob("*.ipynb"), *LIB.rglob("*.py"), ROOT/"README.md"]
    return {str(p.relative_to(ROOT)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files if p.exists() and ".ipynb_checkpoints" not in p.parts and "__pycache__" not in p.parts}

def _default_exps() -> dict[str, Path]:
    "Module name (dotted, relative to the package) -> notebook that exports it."
    out = {}
    for nb in sorted(NBS.rglob("*.ipynb")):
        if any(part.startswith((".", "_")) for part in nb.relative_to(NBS).parts): continue
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] != "code": continue
            m = re.search(r"^#\|\s*default_exp\s+(\S+)", "".join(cell["source"]), re.M)
            if m: out[m.group(1)] = nb
    return out

def stale_modules() -> list[str]:
    "Modules in sae_tutorial/ that no notebook exports (left behind by a renamed or deleted notebook)."
    exps = _default_exps()
    bad = []
    for py in sorted(LIB.rglob("*.py")):
        if py.name in GENERATED or "__pycache__" in py.parts: continue
        mod = ".".join(py.relative_to(LIB).with_suffix("").parts)
        if mod not in exps: bad.append(str(py.relative_to(ROOT)))
    return bad

def render_readme(nb_path: Path = NBS/"index.ipynb") -> str:
    "README.md text from index.ipynb: markdown as is, code in fences with its text output; hidden cells dropped."
    nb = json.loads(nb_path.read_text())
    parts = ["<!-- Generated from nbs/index.ipynb by `python tests/sync.py readme`; edit the notebook, not this file. -->"]
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            parts.append(src.replace("](../images/", "](images/").replace('src="../images/', 'src="images/'))
            continue
        if re.search(r"^#\|\s*(hide|export)", src, re.M): continue
        code = "\n".join(l for l in src.splitlines() if not l.startswith("#|")).strip()
        if not code: continue
        parts.append(f"```python\n{code}\n```")
        for out in cell.get("outputs", []):
            text = out.get("text") or out.get("data", {}).get("text/plain")
            if text: parts.append("```\n" + "".join(text).rstrip() + "\n```")
    return "\n\n".join(parts) + "\n"

def check() -> int:
    problems = []
    before = _snapshot()
    for cmd in (["nbdev-clean"], ["nbdev-export"]):
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if r.returncode: problems.append(f"`{' '.join(cmd)}` failed:\n{r.stdout}{r.stderr}")
    after = _snapshot()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        nbs = [c for c in changed if c.endswith(".ipynb")]
        mods = [c for c in changed if c.endswith(".py")]
        if nbs: problems.append("nbdev-clean changed these notebooks (unclean metadata or outputs):\n  " + "\n  ".join(nbs)
                                + "\n  -> run `nbdev-clean` and commit the notebooks.")
        if mods: problems.append("nbdev-export changed these modules, so a notebook was edited without exporting:\n  "
                                 + "\n  ".join(mods) + "\n  -> run `nbdev-export` and commit the notebook and the modules together.")
    stale = stale_modules()
    if stale: problems.append("these modules come from no notebook (no `#| default_exp` names them):\n  " + "\n  ".join(stale)
                              + "\n  -> delete them (`git rm`) or restore the notebook that exports them, then run `nbdev-export`.")
    readme = ROOT/"README.md"
    if not readme.exists() or readme.read_text() != render_readme():
        problems.append("README.md differs from nbs/index.ipynb\n  -> run `python tests/sync.py readme` and commit README.md.")
    if problems:
        print("sync check FAILED:\n\n" + "\n\n".join(problems), file=sys.stderr)
        return 1
    print(f"sync check ok: notebooks clean, {len(_default_exps())} modules exported and current, README.md matches index.ipynb")
    return 0

if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "check"
    if cmd == "readme":
        (ROOT/"README.md").write_text(render_readme()); print("wrote README.md")
    elif cmd == "check": sys.exit(check())
    else: sys.exit(f"unknown command {cmd!r}; use `check` or `readme`")
