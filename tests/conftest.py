import os

import torch

# Triton kernels run on CPU tensors through the interpreter; it must be chosen before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.environ.get("GENPERF_TEST_MNIST", os.path.join(REPO, "tests", "data", "mnist"))  # MNIST's test split


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slow: end-to-end runs of the quick study, the CPU selftest and GPU probe, and the multi-process and "
        "compiled variants whose plain counterparts the fast tier runs (DDP and FSDP with --amp --compile, "
        "resumes across modes and nodes, every model on two ranks), tens of seconds to minutes each on a 2-core "
        "CPU; README's test command leaves them out (-m 'not slow') and its slow-test command runs them",
    )


@pytest.fixture
def mnist_root():
    """The real MNIST test split, kept in tests/data/mnist (with its attribution)."""
    if not os.path.exists(os.path.join(MNIST, "t10k-images-idx3-ubyte.gz")):
        pytest.fail(f"the MNIST test split is missing at {MNIST} (set GENPERF_TEST_MNIST)")
    return MNIST


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
