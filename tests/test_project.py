"Project plumbing: nbdev settings agree, the sync checker finds what it promises to find."
import configparser, json, sys, tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT/"tests"))
import sync

def _norm(v) -> str:
    return str(v).strip().lower()

def test_settings_ini_agrees_with_pyproject():
    nbdev = tomllib.loads((ROOT/"pyproject.toml").read_text())["tool"]["nbdev"]
    ini = configparser.ConfigParser(); ini.read(ROOT/"settings.ini")
    ini = ini["DEFAULT"]
    for key, val in nbdev.items():
        assert key in ini, f"settings.ini lacks {key!r}, which pyproject.toml [tool.nbdev] sets"
        assert _norm(ini[key]) == _norm(val), f"{key}: settings.ini says {ini[key]!r}, pyproject.toml says {val!r}"
    proj = tomllib.loads((ROOT/"pyproject.toml").read_text())["project"]
    assert ini["lib_name"] == proj["name"]
    assert proj["requires-python"] == ">=" + ini["min_python"]

def test_every_module_has_a_notebook():
    assert sync.stale_modules() == []

def test_stale_module_is_found(tmp_path, monkeypatch):
    (tmp_path/"nbs").mkdir(); (tmp_path/"pkg").mkdir()
    nb = {"cells": [{"cell_type": "code", "source": ["#| default_exp kept\n"], "metadata": {}, "outputs": []}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (tmp_path/"nbs"/"01_kept.ipynb").write_text(json.dumps(nb))
    for name in ("kept.py", "orphan.py", "__init__.py", "_modidx.py"): (tmp_path/"pkg"/name).write_text("")
    monkeypatch.setattr(sync, "ROOT", tmp_path); monkeypatch.setattr(sync, "NBS", tmp_path/"nbs")
    monkeypatch.setattr(sync, "LIB", tmp_path/"pkg")
    assert sync.stale_modules() == ["pkg/orphan.py"]

def test_readme_matches_index():
    assert (ROOT/"README.md").read_text() == sync.render_readme(), "run `python tests/sync.py readme`"

def test_render_readme_by_hand(tmp_path):
    nb = {"cells": [
        {"cell_type": "markdown", "metadata": {}, "source": ["# Title\n", "![fig](../images/a.png)"]},
        {"cell_type": "code", "metadata": {}, "source": ["#| hide\n", "secret = 1"], "outputs": []},
        {"cell_type": "code", "metadata": {}, "source": ["1 + 1"], "execution_count": 1,
         "outputs": [{"output_type": "execute_result", "data": {"text/plain": ["2"]}, "metadata": {}, "execution_count": 1}]}],
        "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    p = tmp_path/"index.ipynb"; p.write_text(json.dumps(nb))
    text = sync.render_readme(p)
    assert "![fig](images/a.png)" in text and "secret" not in text
    assert "```python\n1 + 1\n```\n\n```\n2\n```" in text
