import os

import torch

# Triton kernels run on CPU tensors through the interpreter; it must be chosen before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_MNIST = os.environ.get("GENPERF_SHARED_MNIST", os.path.join(REPO, "..", "shared", "data", "mnist"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs of the quick study, the CPU selftest and FSDP under "
                                       "torch.compile, minutes each on a 2-core CPU; README's test command leaves them "
                                       "out (-m 'not slow') and its slow-test command runs them")


@pytest.fixture
def mnist_root():
    """The real MNIST test split beside the checkout (../shared/data/mnist); CI always has it."""
    if not os.path.exists(os.path.join(SHARED_MNIST, "t10k-images-idx3-ubyte.gz")):
        pytest.fail(f"the shared MNIST test split is missing at {SHARED_MNIST} (set GENPERF_SHARED_MNIST)")
    return SHARED_MNIST


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
