"""VAE (Kingma & Welling) and beta-VAE: the same model, trained with BCE + beta * KL."""

from __future__ import annotations

import torch
from torch import nn

from genperf.models.gan import conv_plan


class VAE(nn.Module):
    """`arch="mlp"`: the study's 784-400-20 MLP (any image size). `arch="conv"`: a conv encoder and
    decoder (32-64-128-256 channels at 64x64). The decoder returns Bernoulli logits."""

    def __init__(self, channels=1, image_size=28, latent_dim=20, arch="mlp", hidden=400, width=32):
        super().__init__()
        self.shape = (channels, image_size, image_size)
        self.latent_dim, self.arch = latent_dim, arch
        if arch == "mlp":
            dim = channels * image_size * image_size
            self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(dim, hidden), nn.ReLU(True))
            self.to_stats = nn.Linear(hidden, 2 * latent_dim)
            self.decoder = nn.Sequential(
                nn.Linear(latent_dim, hidden), nn.ReLU(True), nn.Linear(hidden, dim), nn.Unflatten(1, self.shape)
            )
        elif arch == "conv":
            base, n = conv_plan(image_size, "the conv VAE")
            enc, ch, cin = [], width, channels
            for _ in range(n):
                enc += [nn.Conv2d(cin, ch, 4, 2, 1), nn.ReLU(True)]
                cin, ch = ch, ch * 2
            feat = cin * base * base
            self.encoder = nn.Sequential(*enc, nn.Flatten())
            self.to_stats = nn.Linear(feat, 2 * latent_dim)
            dec = [nn.Linear(latent_dim, feat), nn.ReLU(True), nn.Unflatten(1, (cin, base, base))]
            for i in range(n):
                cout = channels if i == n - 1 else cin // 2
                dec.append(nn.ConvTranspose2d(cin, cout, 4, 2, 1))
                if i < n - 1:
                    dec.append(nn.ReLU(True))
                cin = cout
            self.decoder = nn.Sequential(*dec)
        else:
            raise ValueError(f"VAE arch must be 'mlp' or 'conv', got {arch!r}")

    def encode(self, x):
        mu, logvar = self.to_stats(self.encoder(x)).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z):
        """Bernoulli logits of the pixels."""
        return self.decoder(z)

    def forward(self, x, noise=None):
        """-> (logits, mu, logvar) with z = mu + noise * sigma (the reparameterisation trick); `noise`
        is standard normal of shape (N, latent_dim), drawn here when None."""
        mu, logvar = self.encode(x)
        if noise is None:
            noise = torch.randn(mu.shape, device=mu.device)
        z = mu + noise.to(mu.dtype) * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar

    @torch.no_grad()
    def sample(self, z):
        return torch.sigmoid(self.decode(z).float())
