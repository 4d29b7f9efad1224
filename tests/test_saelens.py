"""SAELens interoperability (sae_tutorial.saelens), checked against SAELens itself.

- Always: the committed fixtures under tests/fixtures/saelens/ (tiny SAEs written by sae-lens 6.54's own
  save_model, with sae-lens's outputs on fixed inputs) load into our classes with the same outputs.
- When a python with sae-lens is available (env SAE_TUTORIAL_SAELENS_PYTHON, else benchmarks/.venv-other made by
  benchmarks/other_tools/setup.sh): sae-lens writes fresh SAEs that we load, and sae-lens loads SAEs we wrote
  and must produce our outputs. Otherwise those tests are skipped with the reason.
"""
import json, os, shutil, subprocess
from pathlib import Path
import pytest
import torch
from safetensors.torch import load_file, save_file
from sae_tutorial.sae import SAEConfig, make_sae, JumpReLUSAE
from sae_tutorial.saelens import load_saelens, save_saelens, to_saelens, SAELENS_WEIGHTS

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT/"tests"/"fixtures"/"saelens"
HELPER = ROOT/"tests"/"saelens_helper"/"saelens_io.py"
NAMES = ["standard", "topk", "topk_rescaled", "jumprelu", "jumprelu_no_bdec_input", "gated"]


def saelens_python() -> str | None:
    env = os.environ.get("SAE_TUTORIAL_SAELENS_PYTHON")
    for c in ([env] if env else []) + [str(ROOT/"benchmarks"/".venv-other"/"bin"/"python")]:
        if c and Path(c).is_file(): return c
    return None


needs_saelens = pytest.mark.skipif(
    saelens_python() is None,
    reason="no python with sae-lens: set SAE_TUTORIAL_SAELENS_PYTHON or run benchmarks/other_tools/setup.sh")


def run_helper(*args) -> dict:
    r = subprocess.run([saelens_python(), str(HELPER), *map(str, args)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""})
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def check_loaded(folder: Path):
    """Our SAE loaded from a sae-lens folder gives sae-lens's recorded outputs: the same active latents exactly, and
    values equal to float32 rounding (folding a norm or a bias into the weights reorders a few roundings)."""
    sae, info = load_saelens(folder)
    io = load_file(str(folder/"io.safetensors"))
    with torch.no_grad(): out = sae(io["x"])
    assert torch.equal(out.f > 0, io["feature_acts"] > 0)
    torch.testing.assert_close(out.f, io["feature_acts"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.x_hat, io["sae_out"], rtol=1e-5, atol=1e-6)
    assert info.hook_name == "blocks.3.hook_resid_post" and info.model_name == "fixture-model"
    assert (io["feature_acts"] > 0).any() and (io["feature_acts"] == 0).any()   # the fixture is really sparse
    return sae, info


@pytest.mark.parametrize("name", NAMES)
def test_committed_fixtures_load_with_saelens_outputs(name):
    sae, info = check_loaded(FIXTURES/name)
    want = {"standard": "relu", "topk": "topk", "topk_rescaled": "topk", "jumprelu": "jumprelu",
            "jumprelu_no_bdec_input": "jumprelu", "gated": "gated"}[name]
    assert sae.cfg.architecture == want and sae.cfg.d_in == 8 and sae.cfg.d_sae == 16
    if name == "topk_rescaled": assert any("rescale" in f for f in info.folded)
    if name == "jumprelu_no_bdec_input": assert any("apply_b_dec_to_input" in f for f in info.folded)


def test_zero_threshold_is_exact():
    "The fixture's θ_0 = 0 becomes log θ = -inf on our side, and feature 0 is then a plain ReLU."
    sae, _ = load_saelens(FIXTURES/"jumprelu")
    assert isinstance(sae, JumpReLUSAE) and sae.log_threshold[0].item() == float("-inf") and sae.threshold[0] == 0
    w = load_file(str(FIXTURES/"jumprelu"/SAELENS_WEIGHTS))
    torch.testing.assert_close(sae.threshold[1:], w["threshold"][1:], rtol=1e-6, atol=0)


def test_pre_v6_config_layout(tmp_path):
    "A SAELens < 6 cfg.json (flat keys, hook_point, no architecture) of the same weights gives the same outputs."
    d = tmp_path/"old"; shutil.copytree(FIXTURES/"standard", d)
    cfg = json.loads((d/"cfg.json").read_text())
    old = {"d_in": 8, "d_sae": 16, "dtype": "float32", "device": "cpu", "model_name": cfg["metadata"]["model_name"],
           "hook_point": cfg["metadata"]["hook_name"], "hook_point_layer": 3, "activation_fn_str": "relu",
           "apply_b_dec_to_input": True, "normalize_activations": False, "context_size": 128}
    (d/"cfg.json").write_text(json.dumps(old))
    check_loaded(d)


def test_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="cfg.json"): load_saelens(tmp_path)
    d = tmp_path/"t"; shutil.copytree(FIXTURES/"standard", d)
    cfg = json.loads((d/"cfg.json").read_text())
    (d/"cfg.json").write_text(json.dumps({**cfg, "architecture": "transcoder"}))
    with pytest.raises(NotImplementedError, match="transcoder"): load_saelens(d)
    (d/"cfg.json").write_text(json.dumps({**cfg, "normalize_activations": "layer_norm"}))
    with pytest.raises(NotImplementedError, match="layer_norm"): load_saelens(d)
    (d/"cfg.json").write_text(json.dumps({**cfg, "d_in": 9}))
    with pytest.raises(ValueError, match="W_enc"): load_saelens(d)
    (d/"cfg.json").write_text(json.dumps(cfg)); (d/SAELENS_WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="safetensors"): load_saelens(d)


@pytest.mark.parametrize("change, needle", [
    (dict(cfg={"k": None}), "k must be an integer"),
    (dict(cfg={"d_in": "8"}), "d_in must be an integer"),
    (dict(cfg={"d_sae": 10**9}), "d_sae must be an integer in 1.."),
    (dict(cfg={"dtype": "nn"}), "is not a floating dtype"),
    (dict(tensors=lambda t: {**t, "W_extra": torch.zeros(3)}), "tensors SAELens does not write (W_extra)"),
    (dict(tensors=lambda t: {**t, "W_enc": t["W_enc"].round().to(torch.int64)}), "non-floating tensors ('W_enc' is I64)"),
    (dict(tensors=lambda t: {**t, "scaling_factor": torch.ones(3)}), "'scaling_factor' has shape (3,)"),
    (dict(tensors=lambda t: {**t, "W_enc": t["W_enc"].index_fill(0, torch.tensor([1]), float("nan"))}), "W_enc hold NaN or Inf"),
])
def test_received_saelens_file_is_checked(tmp_path, change, needle):
    "A SAELens folder from someone else: sizes, k, dtype, tensor names, dtypes and finiteness are checked, each named."
    sae = make_sae(SAEConfig(d_in=8, expansion_factor=2, architecture="topk", k=3))
    d = save_saelens(sae, tmp_path/"s")
    if "cfg" in change:
        cfg = json.loads((d/"cfg.json").read_text())
        for k, v in change["cfg"].items():
            if v is None: cfg.pop(k)
            else: cfg[k] = v
        (d/"cfg.json").write_text(json.dumps(cfg))
    if "tensors" in change: save_file(change["tensors"](load_file(str(d/SAELENS_WEIGHTS))), str(d/SAELENS_WEIGHTS))
    with pytest.raises(ValueError) as e: load_saelens(d)
    assert needle in str(e.value) and str(d) in str(e.value), str(e.value)


def _our_saes():
    "One SAE of each of our architectures (tied ReLU too), with non-trivial weights."
    torch.manual_seed(1)
    out = {}
    for name, kw in [("relu", {}), ("relu_tied", {"tied": True}), ("topk", {"architecture": "topk", "k": 3}),
                     ("jumprelu", {"architecture": "jumprelu", "jumprelu_init_threshold": 0.1}),
                     ("batchtopk", {"architecture": "batchtopk", "k": 3}), ("gated", {"architecture": "gated"})]:
        sae = make_sae(SAEConfig(d_in=8, expansion_factor=2, **kw))
        with torch.no_grad():
            for p in sae.parameters(): p.add_(0.2 * torch.randn_like(p))
        if name == "batchtopk": sae.train(); sae(torch.randn(64, 8)); sae.eval()
        out[name] = sae
    return out


def test_to_saelens_names_and_shapes():
    "SAELens's parameter names and shapes: W_enc [d_in, d_sae], W_dec [d_sae, d_in], JumpReLU `threshold` = exp(log θ)."
    saes = _our_saes()
    want = {"relu": ("standard", {"W_enc", "b_enc", "W_dec", "b_dec"}),
            "relu_tied": ("standard", {"W_enc", "b_enc", "W_dec", "b_dec"}),
            "topk": ("topk", {"W_enc", "b_enc", "W_dec", "b_dec"}),
            "jumprelu": ("jumprelu", {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"}),
            "batchtopk": ("jumprelu", {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"}),
            "gated": ("gated", {"W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec"})}
    for name, sae in saes.items():
        arch, t, _ = to_saelens(sae)
        assert (arch, set(t)) == want[name], name
        assert t["W_enc"].shape == (8, 16) and t["W_dec"].shape == (16, 8)
    _, t, _ = to_saelens(saes["jumprelu"])
    torch.testing.assert_close(t["threshold"], saes["jumprelu"].log_threshold.exp())


@pytest.fixture(scope="module")
def saelens_run(tmp_path_factory):
    """One run of the helper in the sae-lens environment: it writes fresh SAEs (dir `written`) and reads the folders
    we wrote with save_saelens (dir `ours`, our SAEs trained on inputs scaled by `s`)."""
    root = tmp_path_factory.mktemp("saelens")
    saes, s = _our_saes(), 3.0
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(2))
    for name, sae in saes.items():
        save_saelens(sae, root/"ours"/name, hook_name="blocks.1.hook_resid_post", model_name="ours", input_scale=s)
        save_file({"x": x}, str(root/"ours"/name/"x.safetensors"))
    res = run_helper("both", root/"written", root/"ours")
    return root, res, saes, s, x


@needs_saelens
def test_saelens_written_now_loads_with_same_outputs(saelens_run):
    "Fresh files from the installed sae-lens (not only the committed ones) load with identical outputs."
    root, res, *_ = saelens_run
    assert set(res["written"]) == set(NAMES)
    for name in NAMES: check_loaded(root/"written"/name)


@needs_saelens
def test_saelens_reads_our_files_with_our_outputs(saelens_run):
    "sae-lens's SAE.load_from_disk opens save_saelens folders and reproduces our outputs (input scale folded in)."
    root, res, saes, s, x = saelens_run
    classes = {k: v["class"] for k, v in res["read"].items()}
    assert classes == {"relu": "StandardSAE", "relu_tied": "StandardSAE", "topk": "TopKSAE", "jumprelu": "JumpReLUSAE",
                       "batchtopk": "JumpReLUSAE", "gated": "GatedSAE"}
    assert all(v["hook_name"] == "blocks.1.hook_resid_post" for v in res["read"].values())
    for name, sae in saes.items():
        got = load_file(str(root/"ours"/name/"saelens_out.safetensors"))
        with torch.no_grad(): want = sae(s * x)            # our SAE sees the scaled inputs, sae-lens raw ones
        assert (want.f > 0).any() and (want.f == 0).any()
        assert torch.equal(got["feature_acts"] > 0, want.f > 0), name
        torch.testing.assert_close(got["feature_acts"], want.f, rtol=1e-5, atol=1e-5, msg=name)
        torch.testing.assert_close(got["sae_out"] * s, want.x_hat, rtol=1e-5, atol=1e-5, msg=name)
