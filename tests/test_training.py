"""Training alignment: loss, optimizers, learning rates and schedules, several steps, loaders."""

from functools import partial

import numpy as np
import paddle
import pytest
import torch

from padiff import assign_weight, auto_diff
from support import make_net, net_input


def nets():
    paddle_model, torch_model = make_net("paddle"), make_net("torch")
    assert assign_weight(paddle_model, torch_model)
    return paddle_model, torch_model


def inputs(seed=0):
    return net_input("paddle", seed), net_input("torch", seed)


def run(paddle_opt_fn, torch_opt_fn, steps=3, capsys=None, **kw):
    paddle_model, torch_model = nets()
    popt = paddle_opt_fn(paddle_model.parameters())
    topt = torch_opt_fn(torch_model.parameters())
    result = auto_diff(paddle_model, torch_model, inputs(), auto_weights=False, optimizer=[popt, topt],
                       steps=steps, **kw)
    return result, (capsys.readouterr().out if capsys else result.report)


def test_sgd_momentum_matches_paddle_momentum(capsys):
    result, text = run(lambda p: paddle.optimizer.Momentum(learning_rate=0.1, momentum=0.9, parameters=p),
                       lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), capsys=capsys)
    assert result, text
    assert len(result.steps) == 3
    for step in result.steps:
        assert len(step.weights) == 7 and all(f.passed for f in step.weights)
        assert step.lr and step.lr[0].passed
    assert "[AutoDiff] =================Train Step 2================= (2/3 done, about " in text
    assert text.count("[AutoDiff] weight and grad compared.") == 3


def test_momentum_hyperparameter_off_is_an_optimizer_difference(capsys):
    result, text = run(lambda p: paddle.optimizer.Momentum(learning_rate=0.1, momentum=0.8, parameters=p),
                       lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), capsys=capsys)
    assert not result
    # the first step cannot tell momentum apart (the velocity starts at zero); the second can
    assert result.first.stage == "weight" and result.first.step == 1
    assert result.steps[1].grads and all(f.passed for f in result.steps[1].grads)
    assert "Diff found in Weights After Optimizer Step in step 1" in text
    assert "The gradients agreed before the optimizer step, so this is an optimizer difference" in text
    assert "The gradients agreed: an optimizer difference." in text
    log = [p for p in result.log_files if p.endswith("weight_diff.log")][0]
    body = open(log).read()
    assert "After the optimizer step, weight value is different." in body
    assert "paddle path:\n    PaddleNet.linear1.weight\ntorch path:\n    TorchNet.linear1.weight" in body


def test_adam_matches(capsys):
    result, text = run(lambda p: paddle.optimizer.Adam(learning_rate=0.01, parameters=p),
                       lambda p: torch.optim.Adam(p, lr=0.01), capsys=capsys)
    assert result, text


def test_adamw_with_weight_decay_matches(capsys):
    result, text = run(lambda p: paddle.optimizer.AdamW(learning_rate=0.01, weight_decay=0.05, parameters=p),
                       lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.05), capsys=capsys)
    assert result, text


def test_coupled_against_decoupled_weight_decay_is_named_an_optimizer_difference(capsys):
    # torch Adam's weight_decay adds wd*w to the gradient (L2); paddle AdamW decays the weight
    # directly: a classic porting slip
    result, text = run(lambda p: paddle.optimizer.AdamW(learning_rate=0.01, weight_decay=0.05, parameters=p),
                       lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.05), capsys=capsys)
    assert not result
    assert result.first.stage == "weight" and result.first.step == 0
    assert "this is an optimizer difference" in text
    assert result.first.cause.startswith("The gradients agreed before the optimizer step")


def test_learning_rate_schedules_compared_each_step(capsys):
    paddle_model, torch_model = nets()
    psched = paddle.optimizer.lr.StepDecay(learning_rate=0.1, step_size=2, gamma=0.5)
    popt = paddle.optimizer.SGD(learning_rate=psched, parameters=paddle_model.parameters())
    topt = torch.optim.SGD(torch_model.parameters(), lr=0.1)
    tsched = torch.optim.lr_scheduler.StepLR(topt, step_size=2, gamma=0.5)
    result = auto_diff(paddle_model, torch_model, inputs(), auto_weights=False, optimizer=[popt, topt],
                       scheduler=[psched, tsched], steps=5)
    assert result, result.report
    assert [round(s.lr[0].diff.value_b, 6) for s in result.steps] == [0.1, 0.1, 0.05, 0.05, 0.025]


def test_a_schedule_that_decays_differently_is_reported_at_the_first_differing_step(capsys):
    paddle_model, torch_model = nets()
    psched = paddle.optimizer.lr.StepDecay(learning_rate=0.1, step_size=2, gamma=0.1)
    popt = paddle.optimizer.SGD(learning_rate=psched, parameters=paddle_model.parameters())
    topt = torch.optim.SGD(torch_model.parameters(), lr=0.1)
    tsched = torch.optim.lr_scheduler.StepLR(topt, step_size=2, gamma=0.5)
    result = auto_diff(paddle_model, torch_model, inputs(), auto_weights=False, optimizer=[popt, topt],
                       scheduler=[psched, tsched], steps=5)
    text = capsys.readouterr().out
    assert not result
    assert result.first.stage == "lr" and result.first.step == 2
    assert "Diff found in Learning Rate in step 2" in text
    assert "The learning rates in force differ at step 2: [0.05] vs [0.010000000000000002]" in text


def test_cross_entropy_with_bound_labels(capsys):
    labels = np.array([0, 3, 1, 2, 3, 0], dtype="int64")
    paddle_model, torch_model = nets()
    loss_fns = [partial(paddle.nn.functional.cross_entropy, label=paddle.to_tensor(labels)),
                partial(torch.nn.functional.cross_entropy, target=torch.tensor(labels))]
    result = auto_diff(paddle_model, torch_model, inputs(), auto_weights=False, loss_fn=loss_fns)
    assert result, result.report
    assert result.steps[0].loss.passed and result.steps[0].loss.test_type == "loss_fn"


def test_a_loss_that_differs_is_reported_as_the_loss(capsys):
    labels = np.array([0, 3, 1, 2, 3, 0], dtype="int64")
    wrong = labels[::-1].copy()
    paddle_model, torch_model = nets()
    result = auto_diff(paddle_model, torch_model, inputs(), auto_weights=False, loss_fns=[  # plural spelling
        partial(paddle.nn.functional.cross_entropy, label=paddle.to_tensor(wrong)),
        partial(torch.nn.functional.cross_entropy, target=torch.tensor(labels))])
    text = capsys.readouterr().out
    assert not result and result.first.stage == "loss"
    assert "Diff found in Loss in step 0" in text
    assert "The losses differ while every layer output agreed: look at the loss functions." in text


def test_no_argument_optimizer_functions(capsys):
    paddle_model, torch_model = nets()
    popt = paddle.optimizer.SGD(learning_rate=0.1, parameters=paddle_model.parameters())
    topt = torch.optim.SGD(torch_model.parameters(), lr=0.1)
    result = auto_diff(paddle_model, torch_model, inputs(), auto_weights=False, optimizers=[popt.step, topt.step],
                       steps=2)
    assert result, result.report
    assert len(result.steps) == 2 and len(result.steps[1].weights) == 7


def test_steps_without_optimizer_run_once_and_say_so(capsys):
    paddle_model, torch_model = nets()
    result = auto_diff(paddle_model, torch_model, inputs(), auto_weights=False, steps=4)
    text = capsys.readouterr().out
    assert result and len(result.steps) == 1
    assert "steps=4 without an optimizer would repeat the same step: padiff ran 1 step." in text


def test_dropout_in_train_mode_is_called_out_up_front(capsys):
    paddle_model, torch_model = nets()
    paddle_model.act = paddle.nn.Sequential(paddle.nn.ReLU(), paddle.nn.Dropout(0.5))
    torch_model.act = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Dropout(0.5))
    paddle_model.train()
    torch_model.train()
    auto_diff(paddle_model, torch_model, inputs(), auto_weights=False)
    text = capsys.readouterr().out
    assert ("NOTE: The paddle model is in train mode with random layers (PaddleNet.act.1 (p=0.5)): their outputs "
            "cannot agree. Call .eval() on both models") in text


def test_data_loader_loop_of_seed_000_carries_state_across_calls(capsys):
    rng = np.random.default_rng(1)
    images = rng.standard_normal((9, 8)).astype("float32")
    paddle_loader = paddle.io.DataLoader(paddle.io.TensorDataset([paddle.to_tensor(images)]), batch_size=3,
                                         shuffle=False)
    torch_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.tensor(images)), batch_size=3,
                                               shuffle=False)
    paddle_model, torch_model = nets()
    popt = paddle.optimizer.Momentum(learning_rate=0.05, momentum=0.9, parameters=paddle_model.parameters())
    topt = torch.optim.SGD(torch_model.parameters(), lr=0.05, momentum=0.9)
    weights = []
    results = []
    for paddle_batch, torch_batch in zip(paddle_loader, torch_loader):
        inp = ({"x": paddle_batch[0]}, {"x": torch_batch[0]})
        result = auto_diff(paddle_model, torch_model, inp, auto_weights=False, optimizer=[popt, topt],
                           options={"diff_phase": "both"})
        results.append(bool(result))
        weights.append(torch_model.linear1.weight.detach().clone())
        if result == False:  # noqa: E712 (as seed 000 writes it)
            break
    assert results == [True, True, True]
    assert not torch.equal(weights[0], weights[2])  # training went on across the calls


def test_batchnorm_running_variance_is_named_a_buffer_not_an_optimizer_difference(capsys):
    import models

    paddle_model, torch_model = models.convnet_pair(width=4, blocks=(1,))
    paddle_model.train()
    torch_model.train()
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype("float32")  # 32 values per channel
    popt = paddle.optimizer.SGD(learning_rate=0.01, parameters=paddle_model.parameters())
    topt = torch.optim.SGD(torch_model.parameters(), lr=0.01)
    result = auto_diff(paddle_model, torch_model, ({"x": paddle.to_tensor(x)}, {"x": torch.tensor(x)}),
                       optimizer=[popt, topt])
    assert not result and result.first.stage == "weight"
    assert result.first.test_path.endswith("._variance")
    assert result.first.cause.startswith("This is a buffer the forward pass updates, not a weight the optimizer")
    assert all(f.passed for f in result.steps[0].weights if not f.test_path.endswith("._variance"))
