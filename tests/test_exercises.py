"Exercise notebooks: markers leave the package unchanged, stubs keep signatures, learners' names win, notebooks run."
import ast, json, shutil
from pathlib import Path
import pytest
from sae_tutorial.exercises import (ExerciseSpec, ExercisesConfig, exercises_cli, make_exercise_notebook, make_exercises,
                                    parse_exercise_directives, run_notebook, source_notebooks,
                                    strip_exercise_directives, stub_functions)
from sae_tutorial.exercises import _new_cell, _find_defs
from sae_tutorial.checks import CHECKS

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT/"nbs"
MARKED = [p for p in source_notebooks(NBS) if any(parse_exercise_directives("".join(c["source"]))
          for c in json.loads(p.read_text())["cells"] if c["cell_type"] == "code")]

def _cells(p): return json.loads(Path(p).read_text())["cells"]
def _src(c): return "".join(c["source"])
def _nb(*cells): return {"cells": [_new_cell(k, s) for k, s in cells], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}

def test_marked_notebooks_found():
    names = {p.name for p in MARKED}
    assert {"02_sae.ipynb", "03_losses.ipynb", "05_metrics.ipynb"} <= names, names

# --- markers are invisible to nbdev ------------------------------------------------------------------------
@pytest.mark.parametrize("nb", MARKED, ids=lambda p: p.stem)
def test_export_unchanged_by_markers(nb, tmp_path):
    "nbdev-export writes the same module from the marked notebook and from a copy without the markers."
    from nbdev.export import nb_export
    d = json.loads(nb.read_text())
    n_marks = 0
    for c in d["cells"]:
        if c["cell_type"] == "code":
            s = _src(c); n_marks += len(parse_exercise_directives(s)); c["source"] = strip_exercise_directives(s).splitlines(True)
    assert n_marks > 0
    for side in "ab": (tmp_path/side/"nbs").mkdir(parents=True)
    shutil.copy(nb, tmp_path/"a"/"nbs"/nb.name); (tmp_path/"b"/"nbs"/nb.name).write_text(json.dumps(d))
    for side in "ab": nb_export(tmp_path/side/"nbs"/nb.name, lib_path=tmp_path/side/"lib")
    mods_a = sorted(p.name for p in (tmp_path/"a"/"lib").glob("*.py"))
    assert mods_a and mods_a == sorted(p.name for p in (tmp_path/"b"/"lib").glob("*.py"))
    for m in mods_a:
        a, b = (tmp_path/"a"/"lib"/m).read_text(), (tmp_path/"b"/"lib"/m).read_text()
        assert a == b and "exercise" not in a.lower().replace("exercises", "")

def test_nbdev_clean_keeps_markers():
    from nbdev.clean import clean_nb
    nb = json.loads((NBS/"03_losses.ipynb").read_text())
    before = [parse_exercise_directives(_src(c)) for c in nb["cells"] if c["cell_type"] == "code"]
    clean_nb(nb)
    after = [parse_exercise_directives(_src(c)) for c in nb["cells"] if c["cell_type"] == "code"]
    assert before == after and sum(map(len, after)) == 9

# --- stubbing ------------------------------------------------------------------------------------------------
SRC = '''#| export
#| exercise
import functools

@functools.lru_cache()
def one_liner(x: int) -> int: return x + 1

def multi(a,
          b=2):
    """Doc
    on two lines."""
    # a comment that gives the answer away
    c = a + b
    return c
    # trailing comment

def no_doc(x):
    # only a comment
    return x * 2

def doc_only(x):
    "Nothing but a docstring."
'''

def test_stub_every_function_shape():
    out, names = stub_functions(SRC, parse_exercise_directives(SRC), "t")
    assert names == ["one_liner", "multi", "no_doc", "doc_only"]
    ns = {}; exec(out, ns)
    for n, args in [("one_liner", (1,)), ("multi", (1,)), ("no_doc", (1,)), ("doc_only", (1,))]:
        with pytest.raises(NotImplementedError, match=f"Exercise {n} "): ns[n](*args)
    assert ns["multi"].__doc__ == "Doc\n    on two lines." and ns["doc_only"].__doc__ == "Nothing but a docstring."
    for leaked in ("a + b", "gives the answer", "x * 2", "only a comment", "trailing comment", "x + 1"): assert leaked not in out
    assert "@functools.lru_cache()" in out and "def multi(a,\n          b=2):" in out
    tree = ast.parse(out)
    sigs = {n.name: ast.unparse(n.args) for n in tree.body if isinstance(n, ast.FunctionDef)}
    ref = {n.name: ast.unparse(n.args) for n in ast.parse(SRC).body if isinstance(n, ast.FunctionDef)}
    assert sigs == ref

def test_stub_errors_name_the_problem():
    with pytest.raises(ValueError, match="no function 'missing'"):
        stub_functions("def f(): pass\n", [ExerciseSpec("missing", "")])
    with pytest.raises(ValueError, match="cannot read"): parse_exercise_directives("#| exercise 3x: nope\n")

def test_stub_method_with_decorator_and_hint():
    src = "class A:\n    @staticmethod\n    def f(x):\n        'doc'\n        return x\n    def g(self): return 1\n"
    out, names = stub_functions(src, [ExerciseSpec("A.f", "it's x")])
    ns = {}; exec(out, ns)
    with pytest.raises(NotImplementedError, match="it's x"): ns["A"].f(1)
    assert ns["A"]().g() == 1 and names == ["A.f"]

# --- learner's names win -------------------------------------------------------------------------------------
MARK = "#| export\n#| exercise l1_penalty: hint here\ndef l1_penalty(f):\n    'doc'\n    return f.abs().sum(-1).mean()"

@pytest.mark.parametrize("later", [
    "from sae_tutorial.losses import *",
    "from sae_tutorial.losses import l1_penalty, reconstruction_loss",
    "from sae_tutorial.losses import (reconstruction_loss,\n    l1_penalty)",
    "from sae_tutorial.losses import l1_penalty",
])
def test_later_imports_do_not_shadow_learner(later, tmp_path):
    nb = _nb(("markdown", "# T"), ("code", "import torch"),
             ("code", "from sae_tutorial.losses import l1_penalty as early  # before the definition: harmless"),
             ("code", MARK), ("code", later),
             ("code", "assert l1_penalty.__module__ != 'sae_tutorial.losses', l1_penalty.__module__\n"
                      "assert early.__module__ == 'sae_tutorial.losses'"))
    (tmp_path/"s.ipynb").write_text(json.dumps(nb))
    make_exercise_notebook(tmp_path/"s.ipynb", tmp_path/"key.ipynb", with_solutions=True)
    src = "\n".join(_src(c) for c in _cells(tmp_path/"key.ipynb"))
    assert "l1_penalty as early" in src                 # imports before the definition are left alone
    run_notebook(tmp_path/"key.ipynb")
    make_exercise_notebook(tmp_path/"s.ipynb", tmp_path/"ex.ipynb")
    with pytest.raises(NotImplementedError, match="hint here"): run_notebook(tmp_path/"ex.ipynb")

# --- the real notebooks, structurally ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    d = tmp_path_factory.mktemp("ws")
    return d, make_exercises(d/"ex", NBS), make_exercises(d/"key", NBS, with_solutions=True)

def test_every_marked_notebook_generated(generated):
    d, ex, key = generated
    assert set(ex) == {p.name for p in MARKED} == set(key)
    assert "l1_penalty" in (d/"ex"/"EXERCISES.md").read_text()
    for name, infos in ex.items():
        for x in infos: assert x.check == CHECKS.get(x.name), x

@pytest.mark.parametrize("nb", MARKED, ids=lambda p: p.stem)
def test_generated_structure(nb, generated):
    d, ex, key = generated
    src = [c for c in _cells(nb)]
    ex_cells, key_cells = _cells(d/"ex"/nb.name), _cells(d/"key"/nb.name)
    # every source cell appears, in order, with only the intended edits
    orig = [(c["cell_type"], strip_exercise_directives(_src(c))) for c in src]
    def pick(cells):
        added = lambda c: (c["cell_type"] == "code" and (_src(c).startswith("check_") or "Workshop set-up" in _src(c))) or \
                          (c["cell_type"] == "markdown" and _src(c).startswith("<details><summary><b>Still stuck")) or \
                          (c["cell_type"] == "markdown" and (_src(c).startswith("**Check your code**") or "Workshop version" in _src(c)))
        return [c for c in cells if not added(c)]
    ex_kept, key_kept = pick(ex_cells), pick(key_cells)
    assert len(ex_kept) == len(src) == len(key_kept)
    infos = {x.name: x for x in ex[nb.name]}
    for (kind, s), ce, ck, c0 in zip(orig, ex_kept, key_kept, src):
        assert ce["cell_type"] == ck["cell_type"] == kind
        assert not ce.get("outputs") and "#| exercise" not in _src(ce)
        if kind == "markdown": assert _src(ce) == _src(ck) == s; continue
        specs = parse_exercise_directives(_src(c0))
        if not specs:
            assert _src(ce) == _src(ck)                       # protected imports are the same in both
            continue
        assert _src(ck) == s                                   # the key keeps the solution verbatim
        tree = ast.parse(_src(ce))
        for sp in specs:
            for qn, node in _find_defs(tree, sp):
                body = node.body[1:] if isinstance(node.body[0], ast.Expr) else node.body
                assert len(body) == 1 and isinstance(body[0], ast.Raise), qn
                assert ast.unparse(body[0].exc.func) == "NotImplementedError" and qn in infos
                assert infos[qn].hint in ast.literal_eval(body[0].exc.args[0])
    # each check cell comes after the exercise it checks
    srcs = [_src(c) for c in ex_cells]
    for x in ex[nb.name]:
        defined = next(i for i, s in enumerate(srcs) if f"Exercise {x.name} (" in s)
        assert any(s == x.check for s in srcs[defined + 1:]), x

# --- running them ------------------------------------------------------------------------------------------
def test_stubbed_notebook_stops_at_first_exercise_with_hint(generated):
    d, ex, _ = generated
    first = ex["03_losses.ipynb"][0]
    with pytest.raises(NotImplementedError) as e: run_notebook(d/"ex"/"03_losses.ipynb")
    assert f"Exercise {first.name}" in str(e.value) and first.hint and first.hint in str(e.value)

def test_notebook_with_solutions_runs_and_checks_pass(generated, monkeypatch):
    monkeypatch.setenv("SAE_TUTORIAL_BUDGET", "ci")
    d, _, key = generated
    nb = run_notebook(d/"key"/"02_sae.ipynb")
    out = "".join(o.get("text", "") if isinstance(o.get("text", ""), str) else "".join(o["text"])
                  for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert out.count("✓") == len({x.check for x in key["02_sae.ipynb"]}), out
    assert "package's own solution" not in out           # the checks saw the notebook's classes, not the package's

def test_exercises_cli(tmp_path, capsys):
    src = tmp_path/"nbs"; src.mkdir()
    (src/"01_demo.ipynb").write_text(json.dumps(_nb(("markdown", "# D"), ("code", "import torch"), ("code", MARK),
                                                    ("code", "assert float(l1_penalty(torch.ones(2, 3))) == 3.0"))))
    (src/"02_plain.ipynb").write_text(json.dumps(_nb(("markdown", "# P"), ("code", "x = 1"))))
    res = exercises_cli(ExercisesConfig(outdir=str(tmp_path/"key"), src_nbs=str(src), with_solutions=True, run=True))
    assert list(res) == ["01_demo.ipynb"] and not (tmp_path/"key"/"02_plain.ipynb").exists()
    out = capsys.readouterr().out
    assert "1 exercise(s): l1_penalty" in out and "ran 01_demo.ipynb" in out
    with pytest.raises(ValueError, match="with-solutions"): exercises_cli(ExercisesConfig(outdir=str(tmp_path/"x"), run=True))
    with pytest.raises(ValueError, match="no notebook"):
        exercises_cli(ExercisesConfig(outdir=str(tmp_path/"y"), src_nbs=str(src), notebooks="02_plain"))
    make_exercises(tmp_path/"ex", src)
    with pytest.raises(NotImplementedError, match="hint here"): run_notebook(tmp_path/"ex"/"01_demo.ipynb")

def test_cli_registration_lines(tmp_path, monkeypatch):
    "The exact lines proposed for nbs/90_cli.ipynb work with its `command` registry and `main`."
    import sae_tutorial.cli as cli
    monkeypatch.setattr(cli, "COMMANDS", dict(cli.COMMANDS))
    @cli.command("exercises", "write workshop exercise notebooks (stubs with hints + checks) from the marked notebooks")
    def _exercises():
        from sae_tutorial.exercises import ExercisesConfig, exercises_cli
        return [ExercisesConfig], exercises_cli
    assert cli.main(["exercises", "--outdir", str(tmp_path/"ws"), "--notebooks", "03_losses"]) == 0
    assert (tmp_path/"ws"/"03_losses.ipynb").exists() and not (tmp_path/"ws"/"02_sae.ipynb").exists()
    assert cli.main(["exercises", "--outdir", str(tmp_path/"k"), "--run", "true"]) == 1     # --run needs --with-solutions


# --- hints in two tiers; the key keeps its outputs ---------------------------------------------------------
def test_two_tier_hints_nudge_in_stub_formula_folded_after(tmp_path):
    "The stub raises with the nudge only; the formula waits in a folded markdown cell right after the stubbed cell."
    mark = "#| export\n#| exercise l1_penalty: how big f is || sum |f| over dim -1, mean over the batch\n" \
           "def l1_penalty(f):\n    'doc'\n    return f.abs().sum(-1).mean()"
    src = tmp_path/"01_demo.ipynb"
    src.write_text(json.dumps(_nb(("markdown", "# D"), ("code", "import torch"), ("code", mark), ("code", "x = 1"))))
    infos = make_exercise_notebook(src, tmp_path/"ex.ipynb")
    assert [(x.hint, x.formula) for x in infos] == [("how big f is", "sum |f| over dim -1, mean over the batch")]
    cells = _cells(tmp_path/"ex.ipynb")
    i = next(j for j, c in enumerate(cells) if "def l1_penalty" in _src(c))
    assert "how big f is" in _src(cells[i]) and "sum |f|" not in _src(cells[i])
    assert cells[i + 1]["cell_type"] == "markdown" and "<details>" in _src(cells[i + 1])
    assert "sum |f| over dim -1, mean over the batch" in _src(cells[i + 1])
    with pytest.raises(NotImplementedError, match="how big f is"): run_notebook(tmp_path/"ex.ipynb")
    make_exercise_notebook(src, tmp_path/"key.ipynb", with_solutions=True)             # the key needs no hints
    assert not any("<details>" in _src(c) for c in _cells(tmp_path/"key.ipynb"))

def test_key_keeps_outputs_learners_start_empty(tmp_path):
    "The teacher's key keeps the source notebook's outputs (reference results); the learners' copy starts empty."
    nb = _nb(("markdown", "# D"), ("code", "import torch"), ("code", MARK), ("code", "print(3)"))
    nb["cells"][3]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["3\n"]}]
    src = tmp_path/"01_demo.ipynb"; src.write_text(json.dumps(nb))
    make_exercise_notebook(src, tmp_path/"key.ipynb", with_solutions=True)
    make_exercise_notebook(src, tmp_path/"ex.ipynb")
    outs = lambda p: [c.get("outputs") for c in _cells(p) if c["cell_type"] == "code" and _src(c) == "print(3)"]
    assert outs(tmp_path/"key.ipynb") == [[{"output_type": "stream", "name": "stdout", "text": ["3\n"]}]]
    assert outs(tmp_path/"ex.ipynb") == [[]]


# --- the payoff chapters' keys run at the ci budget ---------------------------------------------------------
@pytest.mark.parametrize("name", ["06b_activations.ipynb", "08_feature_inspection.ipynb"])
def test_payoff_keys_run_and_checks_pass(name, generated, monkeypatch):
    "The teacher's keys of 06b and 08 run top to bottom at the ci budget, and each check passes the notebook's own code."
    monkeypatch.setenv("SAE_TUTORIAL_BUDGET", "ci"); monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d, _, key = generated
    assert {x.name for x in key[name]} == {"06b_activations.ipynb": {"sink_mask"},
            "08_feature_inspection.ipynb": {"merge_topk", "logit_effects", "feature_direction", "steering_hook"}}[name]
    nb = run_notebook(d/"key"/name)
    out = "".join(o.get("text", "") if isinstance(o.get("text", ""), str) else "".join(o["text"])
                  for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert out.count("✓") == len({x.check for x in key[name]}), out[-2000:]
    assert "package's own solution" not in out


def test_setup_cell_names_the_install_and_defaults_to_the_workshop_budget(tmp_path):
    """The set-up cell every exercise notebook starts with: in a kernel without the package, an error naming the
    install command (a fresh venv, Colab); with it, the workshop budget unless the teacher set another one."""
    import os, subprocess, sys
    from sae_tutorial.exercises import _SETUP
    code = _SETUP.replace("#| hide\n", "")
    def run(src, budget=None):
        env = {k: v for k, v in os.environ.items() if k != "SAE_TUTORIAL_BUDGET"}
        if budget: env["SAE_TUTORIAL_BUDGET"] = budget
        return subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, env=env, cwd=tmp_path)
    missing = run("import importlib.util as u; u.find_spec = lambda name, *a: None\n" + code)
    assert missing.returncode != 0 and "ModuleNotFoundError" in missing.stderr
    assert "pip install -e '.[dev]'" in missing.stderr and "restart the kernel" in missing.stderr
    for set_by_teacher, expected in ((None, "workshop"), ("ci", "ci")):
        r = run(code + "\nprint(_core.budget())", set_by_teacher)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.split()[-1] == expected
