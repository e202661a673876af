import pytest
import torch
from torch import nn

from genperf.layers import GradientPenalty
from genperf.ops import gradient_penalty_ref


class Linear(nn.Module):
    """critic(x) = <w, x>: its input gradient is w for every sample."""

    def __init__(self, dim):
        super().__init__()
        self.w = nn.Parameter(torch.randn(dim, dtype=torch.float64))

    def forward(self, x):
        return x.flatten(1) @ self.w


class Quadratic(nn.Module):
    """critic(x) = 0.5 x^T A x with A symmetric: its input gradient is A x."""

    def __init__(self, dim):
        super().__init__()
        self.b = nn.Parameter(torch.randn(dim, dim, dtype=torch.float64) / dim**0.5)

    def forward(self, x):
        a = self.b + self.b.T
        v = x.flatten(1)
        return 0.5 * ((v @ a) * v).sum(1)


def test_linear_critic_penalty_and_parameter_gradient():
    critic = Linear(12)
    real, fake = torch.randn(5, 3, 2, 2, dtype=torch.float64), torch.randn(5, 3, 2, 2, dtype=torch.float64)
    gp = gradient_penalty_ref(critic, real, fake, weight=10.0)
    norm = critic.w.detach().norm()
    torch.testing.assert_close(gp, 10.0 * (norm - 1) ** 2)
    gp.backward()  # d/dw of 10 (||w|| - 1)^2 = 20 (||w|| - 1) w / ||w||
    torch.testing.assert_close(critic.w.grad, 20.0 * (norm - 1) * critic.w.detach() / norm)


def test_quadratic_critic_matches_manual_double_backward():
    critic = Quadratic(6)
    real, fake = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    eps = torch.rand(4, dtype=torch.float64)
    gp = GradientPenalty(weight=7.0)(critic, real, fake, eps)
    gp.backward()
    x_hat = eps[:, None] * real + (1 - eps[:, None]) * fake
    b = critic.b.detach().clone().requires_grad_(True)
    grads = x_hat @ (b + b.T)  # the critic's input gradient, written out by hand
    manual = 7.0 * ((grads.norm(dim=1) - 1) ** 2).mean()
    manual.backward()
    torch.testing.assert_close(gp, manual)
    torch.testing.assert_close(critic.b.grad, b.grad)


def test_interpolation_uses_eps_per_sample():
    critic = Quadratic(3)
    real, fake = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    at_real = gradient_penalty_ref(critic, real, fake, 1.0, torch.ones(2, dtype=torch.float64))
    at_fake = gradient_penalty_ref(critic, fake, real, 1.0, torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(at_real, at_fake)


def test_zero_gradient_keeps_a_finite_parameter_gradient():
    critic = Linear(4)
    with torch.no_grad():
        critic.w.zero_()
    gp = gradient_penalty_ref(critic, torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64))
    gp.backward()
    assert torch.isfinite(critic.w.grad).all()
    # The guard moves a zero norm to sqrt(1e-12) = 1e-6, so the penalty is 10 (1 - 1e-6)^2.
    torch.testing.assert_close(gp, torch.tensor(10.0 * (1 - 1e-6) ** 2, dtype=torch.float64))


@pytest.mark.parametrize(
    "fake, eps, match",
    [
        (torch.randn(3, 5), None, "real has shape"),
        (torch.randn(3, 4, dtype=torch.float64), None, "differ"),
        (torch.randn(3, 4), torch.rand(2), "eps has shape"),
    ],
)
def test_bad_input_is_named(fake, eps, match):
    with pytest.raises(ValueError, match=match):
        gradient_penalty_ref(Linear(4).float(), torch.randn(3, 4), fake, eps=eps)
