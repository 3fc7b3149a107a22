"""Small PyTorch models in the shapes real ones take, for export to ONNX in the tests.

``Encoder``: BERT/GPT-style block (embeddings, pre-LN attention with padding and causal
masks, GELU MLP). ``LlamaBlock``: RMSNorm, rotary embeddings, grouped KV heads, SiLU-gated
MLP. ``small_cnn``: conv + BN + ReLU + max pool, grouped/depthwise convs, Hardswish, ReLU6,
global average pool, linear.
"""

import io
import math
import warnings

import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F


class Encoder(nn.Module):
    def __init__(self, vocab: int = 50, d: int = 32, heads: int = 4):
        super().__init__()
        self.d, self.h = d, heads
        self.emb, self.pos = nn.Embedding(vocab, d), nn.Embedding(64, d)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, ids, mask):
        b, t = ids.shape
        pos = torch.arange(t).unsqueeze(0).expand(b, t)
        x = self.emb(ids) + self.pos(pos)
        q, k, v = self.qkv(self.ln1(x)).split(self.d, dim=-1)
        dh = self.d // self.h
        q, k, v = (z.view(b, t, self.h, dh).transpose(1, 2) for z in (q, k, v))
        att = q @ k.transpose(-2, -1) / math.sqrt(dh)
        att = att + (1.0 - mask[:, None, None, :].float()) * -10000.0
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)
        att = att.masked_fill(causal, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, self.d)
        x = x + self.proj(y)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.rand(d) + 0.5), eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class LlamaBlock(nn.Module):
    def __init__(self, d: int = 32, heads: int = 4, kv_heads: int = 2):
        super().__init__()
        self.d, self.h, self.kv, self.dh = d, heads, kv_heads, d // heads
        self.n1, self.n2 = RMSNorm(d), RMSNorm(d)
        self.q, self.o = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)
        self.k, self.v = nn.Linear(d, kv_heads * self.dh, bias=False), nn.Linear(d, kv_heads * self.dh, bias=False)
        self.gate, self.up = nn.Linear(d, 64, bias=False), nn.Linear(d, 64, bias=False)
        self.down = nn.Linear(64, d, bias=False)
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, self.dh, 2).float() / self.dh)))

    def rotate(self, x, cos, sin):
        x1, x2 = x[..., : self.dh // 2], x[..., self.dh // 2:]
        return x * cos + torch.cat((-x2, x1), -1) * sin

    def forward(self, x):
        b, t, _ = x.shape
        freqs = torch.outer(torch.arange(t).float(), self.inv_freq)
        emb = torch.cat((freqs, freqs), -1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        h = self.n1(x)
        q = self.q(h).view(b, t, self.h, self.dh).transpose(1, 2)
        k = self.k(h).view(b, t, self.kv, self.dh).transpose(1, 2)
        v = self.v(h).view(b, t, self.kv, self.dh).transpose(1, 2)
        q, k = self.rotate(q, cos, sin), self.rotate(k, cos, sin)
        k, v = (z.repeat_interleave(self.h // self.kv, dim=1) for z in (k, v))
        att = (q @ k.transpose(-1, -2)) * self.dh ** -0.5
        att = att + torch.full((t, t), float("-inf")).triu(1)
        y = att.softmax(-1) @ v
        x = x + self.o(y.transpose(1, 2).reshape(b, t, self.d))
        h = self.n2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


def small_cnn() -> nn.Module:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2), nn.BatchNorm2d(16), nn.Hardswish(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(16, 10))
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def export(model: nn.Module, args, input_names, dynamic_axes, opset: int, fold: bool = True) -> onnx.ModelProto:
    """``torch.onnx.export`` with the TorchScript exporter (the dynamo one needs onnxscript)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), args, buffer, dynamo=False, opset_version=opset, input_names=input_names,
                          output_names=["out"], dynamic_axes=dynamic_axes, do_constant_folding=fold)
    return onnx.load_from_string(buffer.getvalue())
