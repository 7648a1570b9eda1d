# The auto_diff tutorial of seed 001, as written there (torch model first; keyword options).
# The only change: the seed's loss_fn lists lack a comma between their two items.
from functools import partial

from padiff import auto_diff
import torch
import paddle


class SimpleModule(torch.nn.Module):
  def __init__(self):
      super(SimpleModule, self).__init__()
      self.linear1 = torch.nn.Linear(100, 100)
      self.linear2 = torch.nn.Linear(100, 10)
      self.act = torch.nn.ReLU()

  def forward(self, x):
      resdual = x
      x = self.linear1(x)
      x = self.act(x)
      x = x + resdual
      x = self.linear2(x)
      return x

class SimpleLayer(paddle.nn.Layer):
  def __init__(self):
      super(SimpleLayer, self).__init__()
      self.linear1 = paddle.nn.Linear(100, 100)
      self.linear2 = paddle.nn.Linear(100, 10)
      self.act = paddle.nn.ReLU()

  def forward(self, x):
      resdual = x
      x = self.linear1(x)
      x = self.act(x)
      x = x + resdual
      x = self.linear2(x)
      return x


module = SimpleModule()
layer = SimpleLayer()

inp = paddle.rand((100, 100)).numpy().astype("float32")
inp = ({"x": torch.as_tensor(inp)},
     {"x": paddle.to_tensor(inp)})

auto_diff(module, layer, inp, atol=1e-4, compare_mode="strict", single_step=False)

# 3.1 loss
label = paddle.rand([10]).numpy().astype("float32")

def paddle_loss(inp, label):
    label = paddle.to_tensor(label)
    return inp.mean() - label.mean()

def torch_loss(inp, label):
    label = torch.tensor(label)
    return inp.mean() - label.mean()

auto_diff(module, layer, inp, auto_init=True, atol=1e-4, loss_fn=[
    partial(torch_loss, label=label),
    partial(paddle_loss, label=label),
])

paddle_mse = paddle.nn.MSELoss()
torch_mse = torch.nn.MSELoss()

auto_diff(module, layer, inp, auto_init=True, atol=1e-4, loss_fn=[
    partial(torch_mse, target=torch.tensor(label)),
    partial(paddle_mse, label=paddle.to_tensor(label)),
])

# 3.2 optimizer
paddle_opt = paddle.optimizer.Adam(learning_rate=0.001, parameters=layer.parameters())
torch_opt = torch.optim.Adam(lr=0.001, params=module.parameters())

auto_diff(
    module,
    layer,
    inp,
    auto_init=True,
    atol=1e-4,
    optimizers=[torch_opt, paddle_opt],
)

# 4. assign_weight
import os
os.environ["PADIFF_API_CHECK"] = "OFF"

from padiff import assign_weight, LayerMap

layer = SimpleLayer()
module = SimpleModule()

assign_weight(layer, module)
