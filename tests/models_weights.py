"""Model pairs for the weight tests: each torch model and its paddle port compute the same
function but are *built differently* (layer order, wrappers, fused vs separate projections,
names), as real ports are."""

from __future__ import annotations

import math

import numpy as np
import paddle
import paddle.nn.functional as PF
import torch
import torch.nn.functional as TF

# --- ResNet-style: a stem, two blocks (one with a downsample branch), a head --------------------


class TorchBasicBlock(torch.nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.relu = torch.nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                  torch.nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + (self.downsample(x) if self.downsample is not None else x))


class TorchResNet(torch.nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        # SyncBatchNorm against paddle's BatchNorm2D (it runs as a BatchNorm in eval mode)
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 1, 1, bias=False), torch.nn.SyncBatchNorm(8),
                                        torch.nn.ReLU())
        self.layer1 = torch.nn.Sequential(TorchBasicBlock(8, 16, 2), TorchBasicBlock(16, 16))
        self.fc = torch.nn.Linear(16, classes)

    def forward(self, x):
        y = self.layer1(self.stem(x))
        return self.fc(y.mean((2, 3)))


class PaddleBasicBlock(paddle.nn.Layer):
    """The downsample branch comes first, is flat (no Sequential), and the norms are named
    differently: registration order pairs the 1x1 conv with the 3x3 one."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.has_short = stride != 1 or cin != cout
        if self.has_short:
            self.short_conv = paddle.nn.Conv2D(cin, cout, 1, stride, bias_attr=False)
            self.short_norm = paddle.nn.BatchNorm2D(cout)
        self.conv_a = paddle.nn.Conv2D(cin, cout, 3, stride, 1, bias_attr=False)
        self.norm_a = paddle.nn.BatchNorm2D(cout)
        self.conv_b = paddle.nn.Conv2D(cout, cout, 3, 1, 1, bias_attr=False)
        self.norm_b = paddle.nn.BatchNorm2D(cout)

    def forward(self, x):
        y = PF.relu(self.norm_a(self.conv_a(x)))
        y = self.norm_b(self.conv_b(y))
        short = self.short_norm(self.short_conv(x)) if self.has_short else x
        return PF.relu(y + short)


class PaddleResNet(paddle.nn.Layer):
    def __init__(self, classes=5):
        super().__init__()
        self.head = paddle.nn.Linear(16, classes)  # defined first
        self.stem_conv = paddle.nn.Conv2D(3, 8, 3, 1, 1, bias_attr=False)
        self.stem_norm = paddle.nn.BatchNorm2D(8)
        self.blocks = paddle.nn.LayerList([PaddleBasicBlock(8, 16, 2), PaddleBasicBlock(16, 16)])

    def forward(self, x):
        y = PF.relu(self.stem_norm(self.stem_conv(x)))
        for b in self.blocks:
            y = b(y)
        return self.head(y.mean((2, 3)))


def randomize_bn(torch_model):
    """Give every torch BatchNorm non-trivial statistics and affine weights (so a BatchNorm
    paired with the wrong one gives a different output)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in torch_model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
    return torch_model


# --- Transformer block: torch nn.MultiheadAttention against q/k/v Linears ------------------------


class TorchTransformerBlock(torch.nn.Module):
    def __init__(self, d=16, heads=4):
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(d)
        self.attn = torch.nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm2 = torch.nn.LayerNorm(d)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(d, 4 * d), torch.nn.GELU(), torch.nn.Linear(4 * d, d))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class PaddleSelfAttention(paddle.nn.Layer):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.q = paddle.nn.Linear(d, d)
        self.k = paddle.nn.Linear(d, d)
        self.v = paddle.nn.Linear(d, d)
        self.proj = paddle.nn.Linear(d, d)

    def forward(self, x):
        b, n, d = x.shape
        hd = d // self.heads

        def split(t):
            return t.reshape([b, n, self.heads, hd]).transpose([0, 2, 1, 3])

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = PF.softmax(q @ k.transpose([0, 1, 3, 2]) / math.sqrt(hd), axis=-1)
        y = (att @ v).transpose([0, 2, 1, 3]).reshape([b, n, d])
        return self.proj(y)


class PaddleTransformerBlock(paddle.nn.Layer):
    """MLP first and flat, attention as four Linears, norms named ln_1/ln_2."""

    def __init__(self, d=16, heads=4):
        super().__init__()
        self.fc1 = paddle.nn.Linear(d, 4 * d)
        self.fc2 = paddle.nn.Linear(4 * d, d)
        self.attention = PaddleSelfAttention(d, heads)
        self.ln_1 = paddle.nn.LayerNorm(d)
        self.ln_2 = paddle.nn.LayerNorm(d)

    def forward(self, x):
        x = x + self.attention(self.ln_1(x))
        return x + self.fc2(PF.gelu(self.fc1(self.ln_2(x))))


class PaddleMHABlock(paddle.nn.Layer):
    """The same block with paddle's own nn.MultiHeadAttention."""

    def __init__(self, d=16, heads=4):
        super().__init__()
        self.norm1 = paddle.nn.LayerNorm(d)
        self.attn = paddle.nn.MultiHeadAttention(d, heads)
        self.norm2 = paddle.nn.LayerNorm(d)
        self.mlp = paddle.nn.Sequential(paddle.nn.Linear(d, 4 * d), paddle.nn.GELU(), paddle.nn.Linear(4 * d, d))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h)
        return x + self.mlp(self.norm2(x))


class TorchSelfAttention(torch.nn.Module):
    """The torch twin of PaddleSelfAttention, its output Linear named ``o`` and defined first."""

    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.o = torch.nn.Linear(d, d)
        self.q = torch.nn.Linear(d, d)
        self.k = torch.nn.Linear(d, d)
        self.v = torch.nn.Linear(d, d)

    def forward(self, x):
        b, n, d = x.shape
        hd = d // self.heads

        def split(t):
            return t.reshape(b, n, self.heads, hd).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = TF.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
        return self.o((att @ v).transpose(1, 2).reshape(b, n, d))


class TorchFusedAttention(torch.nn.Module):
    """q, k and v from one fused Linear (timm/ViT style)."""

    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(d, 3 * d)
        self.proj = torch.nn.Linear(d, d)

    def forward(self, x):
        b, n, d = x.shape
        hd = d // self.heads
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        att = TF.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, n, d))


class TorchFusedBlock(torch.nn.Module):
    def __init__(self, d=16, heads=4):
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(d)
        self.attn = TorchFusedAttention(d, heads)
        self.norm2 = torch.nn.LayerNorm(d)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(d, 4 * d), torch.nn.GELU(), torch.nn.Linear(4 * d, d))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


# --- A tagger: Embedding, bidirectional 2-layer LSTM, head --------------------------------------


class TorchTagger(torch.nn.Module):
    def __init__(self, vocab=20, emb=6, hidden=8, tags=3):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, emb)
        self.lstm = torch.nn.LSTM(emb, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.out = torch.nn.Linear(2 * hidden, tags)

    def forward(self, ids):
        y, _ = self.lstm(self.embed(ids))
        return self.out(y)


class PaddleTagger(paddle.nn.Layer):
    def __init__(self, vocab=20, emb=6, hidden=8, tags=3):
        super().__init__()
        self.classifier = paddle.nn.Linear(2 * hidden, tags)
        self.rnn = paddle.nn.LSTM(emb, hidden, num_layers=2, direction="bidirect")
        self.word_emb = paddle.nn.Embedding(vocab, emb)

    def forward(self, ids):
        y, _ = self.rnn(self.word_emb(ids))
        return self.classifier(y)


# --- twins that differ in one layer (for the failure report) ------------------------------------


class TorchMLP(torch.nn.Module):
    def __init__(self, hidden=6):
        super().__init__()
        self.fc1 = torch.nn.Linear(4, hidden)
        self.act = torch.nn.ReLU()
        self.fc2 = torch.nn.Linear(hidden, 3)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class PaddleMLP(paddle.nn.Layer):
    def __init__(self, hidden=6):
        super().__init__()
        self.fc1 = paddle.nn.Linear(4, hidden)
        self.act = paddle.nn.ReLU()
        self.fc2 = paddle.nn.Linear(hidden, 3)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class PaddleMLPReordered(paddle.nn.Layer):
    """PaddleMLP with fc2 defined before fc1: the same calls, another definition order."""

    def __init__(self, hidden=6):
        super().__init__()
        self.fc2 = paddle.nn.Linear(hidden, 3)
        self.fc1 = paddle.nn.Linear(4, hidden)
        self.act = paddle.nn.ReLU()

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


# --- helpers ------------------------------------------------------------------------------------


def seeded(seed=0):
    torch.manual_seed(seed)
    paddle.seed(seed)
    np.random.seed(seed)


def outputs(torch_model, paddle_model, x, dtype="float32"):
    """Both models' outputs (eval mode, no grad) on the same numpy input, as numpy."""
    torch_model.eval()
    paddle_model.eval()
    with torch.no_grad():
        t = torch_model(torch.as_tensor(x)).numpy()
    p = paddle_model(paddle.to_tensor(x)).numpy()
    return t, p


def max_diff(torch_model, paddle_model, x) -> float:
    t, p = outputs(torch_model, paddle_model, x)
    return float(np.abs(t - p).max())
