"Fixtures shared by several test modules. Nothing here is autouse: a module asks for what it needs."
import pytest
import torch


@pytest.fixture(scope="module")
def torch_one_thread():
    """One torch thread while the requesting module runs, restored afterwards. Tiny SAEs gain nothing from more, and
    on the shared 2-core dev machines OpenMP spinning slows everyone down. Request it with
    `pytestmark = pytest.mark.usefixtures("torch_one_thread")`, or through lm_fixtures.one_thread."""
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
