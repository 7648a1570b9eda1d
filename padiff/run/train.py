"""The training half of a step: gradients cleared, the optimizer and scheduler stepped, the
learning rates in force and the weights after the step compared."""

from __future__ import annotations

from typing import List

import numpy as np

from ..compare.engine import compare_links
from ..compare.metrics import Tolerance, compare_arrays, tolerance_for
from ..compare.result import Cause, Finding
from ..errors import PadiffError
from ..record.trace import TensorRecord
from ..side import Side


def clear_grads(side: Side) -> None:
    """Every parameter's gradient set to none: a step's backward starts from nothing, and the
    user's model is left without padiff's gradients."""
    ad = side.adapter
    for _, p in ad.all_params(side.model):
        if ad.param_grad(p) is not None:
            ad.set_grad(p, None)


def step_optimizer(side: Side, opt) -> None:
    ad = side.adapter
    if ad.is_optimizer(opt):
        ad.optimizer_step(opt)
    elif callable(opt):
        opt()
    else:
        raise PadiffError(f"The {side.label} optimizer is a {type(opt).__name__}: pass an optimizer of its framework "
                          "or a no-argument function that updates the weights.")


def learning_rates(side: Side, opt):
    """The learning rates ``opt`` will use (None for a plain function)."""
    return side.adapter.optimizer_lr(opt) if opt is not None and side.adapter.is_optimizer(opt) else None


def step_scheduler(side: Side, sched) -> None:
    if hasattr(sched, "step"):
        sched.step()
    elif callable(sched):
        sched()
    else:
        raise PadiffError(f"The {side.label} scheduler is a {type(sched).__name__}: pass a learning-rate scheduler "
                          "with .step(), or a no-argument function.")


def train_step(side: Side, opt, sched=None):
    """One optimizer step (and scheduler step); returns the learning rates that step used."""
    lrs = learning_rates(side, opt)
    step_optimizer(side, opt)
    if sched is not None:
        step_scheduler(side, sched)
    return lrs


def lr_findings(lrs, opts, step: int) -> List[Finding]:
    """The learning rates in force on both sides, compared (none when either is unknown)."""
    a, b = lrs
    if a is None or b is None:
        return []
    tol = (Tolerance(0.0, 1e-6, False) if opts.atol is None and opts.rtol is None
           else tolerance_for(opts, "float64", "float64"))
    va, vb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if va.shape != vb.shape:  # torch keeps one lr per parameter group, paddle one per optimizer
        va, vb = va[:1], vb[:1]
    d = compare_arrays(vb, va, tol)
    f = Finding("lr", "learning rate", "optimizer", "optimizer", "lr", "lr", d, step)
    if not d.passed:
        f.explain(Cause.LEARNING_RATE, f"The learning rates in force differ at step {step}: {va.tolist()} vs "
                                       f"{vb.tolist()} (check the schedulers).")
    return [f]


def weight_findings(links, grad_findings, read_ref, read_test, opts, step: int, reprs) -> List[Finding]:
    """The weights after the optimizer step, compared; a difference where the gradients agreed
    is named an optimizer difference."""
    findings = compare_links(links, read_ref, read_test, "weight", "weight", opts, step, reprs)
    grads_ok = all(f.passed for f in grad_findings)
    buffers = {l.dst_path for l in links if not l.src_is_param}
    for f in findings:
        if f.passed:
            continue
        if f.test_path in buffers:
            f.explain(Cause.BUFFER_UPDATE, (
                "This is a buffer the forward pass updates, not a weight the optimizer changes: in train mode "
                "one framework's BatchNorm may update its running variance with the biased batch variance and "
                "the other's with the unbiased one, which differ for small batches. Compare in eval mode, or "
                "ignore the running statistics."))
        elif grads_ok:
            f.explain(Cause.OPTIMIZER, ("The gradients agreed before the optimizer step, so this is an optimizer "
                                        "difference (learning rate, momentum, weight decay, epsilon?)."))
        else:
            f.explain(Cause.FOLLOWS_BACKWARD, "The gradients already differed, so this follows from the backward "
                                              "difference.")
    return findings


def weight_findings_of_sides(links, grad_findings, ref: Side, test: Side, opts, step: int,
                             reprs) -> List[Finding]:
    """``weight_findings`` read from two live models' tensors."""
    return weight_findings(
        links, grad_findings,
        lambda l: TensorRecord(ref.adapter.to_numpy(l.src_tensor), ref.adapter.dtype_name(l.src_tensor)),
        lambda l: TensorRecord(test.adapter.to_numpy(l.dst_tensor), test.adapter.dtype_name(l.dst_tensor)),
        opts, step, reprs)
