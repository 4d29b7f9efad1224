"The shared helpers of nbs/00_core.ipynb, beyond the notebook's own checks."
import os
import numpy as np, torch, pytest
from sae_tutorial.core import budget, per_budget, seed_everything, check_finite, get_device, images_dir

@pytest.mark.parametrize("value,expected", [("ci", "ci"), ("CPU", "cpu"), (" gpu ", "gpu")])
def test_budget_reads_env(monkeypatch, value, expected):
    monkeypatch.setenv("SAE_TUTORIAL_BUDGET", value)
    assert budget() == expected

def test_budget_default_follows_hardware(monkeypatch):
    monkeypatch.delenv("SAE_TUTORIAL_BUDGET", raising=False)
    assert budget() == ("gpu" if torch.cuda.is_available() else "cpu")

def test_bad_budget_names_the_fix(monkeypatch):
    monkeypatch.setenv("SAE_TUTORIAL_BUDGET", "huge")
    with pytest.raises(ValueError, match="one of ci, cpu, gpu"): budget()

def test_seed_everything_repeats_all_generators():
    g = seed_everything(7); first = (np.random.rand(3), torch.rand(3), torch.rand(3, generator=g))
    g = seed_everything(7); second = (np.random.rand(3), torch.rand(3), torch.rand(3, generator=g))
    for a, b in zip(first, second): np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

def test_check_finite_counts_bad_entries():
    x = torch.tensor([0., float("inf"), float("-inf"), float("nan")])
    with pytest.raises(ValueError, match="1 NaN and 2 Inf entries"): check_finite(x)
    assert check_finite(torch.arange(3)).tolist() == [0, 1, 2]  # integers pass untouched

def test_ci_budget_never_writes_images(monkeypatch):
    monkeypatch.setenv("SAE_TUTORIAL_BUDGET", "ci")
    assert images_dir().name == "sae_tutorial_images"

def test_device_env_override(monkeypatch):
    monkeypatch.setenv("SAE_TUTORIAL_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")
