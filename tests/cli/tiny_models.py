"""Small models the CLI tests quantize: a ``module:factory`` target and an ONNX file from outside bitfold."""

import torch
from torch import nn


class NormMLP(nn.Module):
    """LayerNorm → Linear → GELU → Linear, a residual, and a classifier head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.norm = nn.LayerNorm(32)
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))
        return self.head(h)


def build():
    """The ``module:factory`` the tests name: the model and an example input."""
    return NormMLP().eval(), (torch.randn(4, 32),)


def build_without_example():
    return NormMLP().eval()


def not_a_module():
    return "a string"


class TinyAttention(nn.Module):
    """An attention classifier bitfold has never seen; exported with torch.onnx.export."""

    def __init__(self, dim: int = 24, classes: int = 5) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Sequential(nn.Linear(dim, 32), nn.Tanh(), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        a = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        x = x + self.proj(a @ v)
        return self.head(x.mean(dim=1))
