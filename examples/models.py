"""The bundled model pairs: the same networks written in PyTorch and in PaddlePaddle.

* ``ConvNet``: a small ResNet-style network (conv-BN-ReLU stem, residual blocks with a
  downsample branch, global pooling, a classifier).
* ``Encoder``: a small Transformer encoder (pre-norm blocks, hand-written multi-head
  attention with q/k/v/out projections, a GELU MLP).

Each factory takes ``bug=`` to inject one deliberate porting mistake into the paddle side,
so the example and the tests can show what padiff reports.
"""

from __future__ import annotations

import paddle
import torch
import torch.nn.functional as TF
import paddle.nn.functional as PF

# --------------------------------------------------------------------------- ConvNet -----


class TorchBasicBlock(torch.nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.relu = torch.nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = torch.nn.Sequential(
                torch.nn.Conv2d(cin, cout, 1, stride, bias=False), torch.nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class PaddleBasicBlock(paddle.nn.Layer):
    def __init__(self, cin, cout, stride, bug=None):
        super().__init__()
        self.conv1 = paddle.nn.Conv2D(cin, cout, 3, stride, 1, bias_attr=False)
        self.bn1 = paddle.nn.BatchNorm2D(cout, epsilon=1e-2 if bug == "bn_epsilon" else 1e-5)
        self.conv2 = paddle.nn.Conv2D(cout, cout, 3, 1, 1, bias_attr=False)
        self.bn2 = paddle.nn.BatchNorm2D(cout)
        self.relu = paddle.nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = paddle.nn.Sequential(
                paddle.nn.Conv2D(cin, cout, 1, stride, bias_attr=False), paddle.nn.BatchNorm2D(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class TorchConvNet(torch.nn.Module):
    def __init__(self, width=16, blocks=(1, 1), num_classes=10):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, width, 3, 1, 1, bias=False),
                                        torch.nn.BatchNorm2d(width), torch.nn.ReLU())
        layers, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * (2 ** i)
            for j in range(n):
                layers.append(TorchBasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.layers = torch.nn.Sequential(*layers)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class PaddleConvNet(paddle.nn.Layer):
    def __init__(self, width=16, blocks=(1, 1), num_classes=10, bug=None):
        super().__init__()
        self.stem = paddle.nn.Sequential(paddle.nn.Conv2D(3, width, 3, 1, 1, bias_attr=False),
                                         paddle.nn.BatchNorm2D(width), paddle.nn.ReLU())
        layers, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * (2 ** i)
            for j in range(n):
                last = i == len(blocks) - 1 and j == n - 1
                layers.append(PaddleBasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1,
                                               bug=bug if last else None))
                cin = cout
        self.layers = paddle.nn.Sequential(*layers)
        self.pool = paddle.nn.AdaptiveAvgPool2D(1)
        self.fc = paddle.nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(paddle.flatten(self.pool(x), 1))


# --------------------------------------------------------------------------- Encoder -----


class TorchAttention(torch.nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q = torch.nn.Linear(dim, dim)
        self.k = torch.nn.Linear(dim, dim)
        self.v = torch.nn.Linear(dim, dim)
        self.out = torch.nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        h = self.heads

        def split(y):
            return y.reshape(b, t, h, d // h).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // h) ** 0.5, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        return self.out(y)


class PaddleAttention(paddle.nn.Layer):
    def __init__(self, dim, heads, bug=None):
        super().__init__()
        self.heads = heads
        self.bug = bug
        self.q = paddle.nn.Linear(dim, dim)
        self.k = paddle.nn.Linear(dim, dim)
        self.v = paddle.nn.Linear(dim, dim)
        self.out = paddle.nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        h = self.heads

        def split(y):
            return y.reshape([b, t, h, d // h]).transpose([0, 2, 1, 3])

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scale = (d // h) ** 0.5 if self.bug != "attn_scale" else d ** 0.5
        att = PF.softmax(q @ k.transpose([0, 1, 3, 2]) / scale, axis=-1)
        y = (att @ v).transpose([0, 2, 1, 3]).reshape([b, t, d])
        return self.out(y)


class TorchMLP(torch.nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = torch.nn.Linear(dim, hidden)
        self.fc2 = torch.nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(TF.gelu(self.fc1(x)))


class PaddleMLP(paddle.nn.Layer):
    def __init__(self, dim, hidden, bug=None):
        super().__init__()
        self.bug = bug
        self.fc1 = paddle.nn.Linear(dim, hidden)
        self.fc2 = paddle.nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(PF.gelu(self.fc1(x), approximate=self.bug == "gelu_tanh"))


class TorchBlock(torch.nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(dim)
        self.attn = TorchAttention(dim, heads)
        self.norm2 = torch.nn.LayerNorm(dim)
        self.mlp = TorchMLP(dim, hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PaddleBlock(paddle.nn.Layer):
    def __init__(self, dim, heads, hidden, bug=None):
        super().__init__()
        self.norm1 = paddle.nn.LayerNorm(dim, epsilon=1e-3 if bug == "ln_epsilon" else 1e-5)
        self.attn = PaddleAttention(dim, heads, bug)
        self.norm2 = paddle.nn.LayerNorm(dim)
        self.mlp = PaddleMLP(dim, hidden, bug)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TorchEncoder(torch.nn.Module):
    def __init__(self, dim=32, heads=4, hidden=64, depth=2):
        super().__init__()
        self.blocks = torch.nn.ModuleList([TorchBlock(dim, heads, hidden) for _ in range(depth)])
        self.norm = torch.nn.LayerNorm(dim)

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


class PaddleEncoder(paddle.nn.Layer):
    def __init__(self, dim=32, heads=4, hidden=64, depth=2, bug=None, bug_block=None):
        super().__init__()
        bug_block = depth - 1 if bug_block is None else bug_block
        self.blocks = paddle.nn.LayerList(
            [PaddleBlock(dim, heads, hidden, bug if i == bug_block else None) for i in range(depth)])
        self.norm = paddle.nn.LayerNorm(dim)

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


# --------------------------------------------------------------------------- factories ---

def convnet_pair(bug=None, seed=0, **kw):
    torch.manual_seed(seed)
    paddle.seed(seed)
    return PaddleConvNet(bug=bug, **kw), TorchConvNet(**kw)


def encoder_pair(bug=None, seed=0, **kw):
    torch.manual_seed(seed)
    paddle.seed(seed)
    bug_block = kw.pop("bug_block", None)
    return PaddleEncoder(bug=bug, bug_block=bug_block, **kw), TorchEncoder(**kw)


def image_inputs(batch=4, size=16, seed=0):
    import numpy as np

    x = np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype("float32")
    return {"x": paddle.to_tensor(x)}, {"x": torch.tensor(x)}


def token_inputs(batch=2, tokens=8, dim=32, seed=0):
    import numpy as np

    x = np.random.default_rng(seed).standard_normal((batch, tokens, dim)).astype("float32")
    return {"x": paddle.to_tensor(x)}, {"x": torch.tensor(x)}
