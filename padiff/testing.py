"""A pytest helper for teams who keep a model port under test.

    from padiff.testing import assert_aligned

    def test_port_matches_original():
        assert_aligned(torch_model, paddle_model, (torch_inputs, paddle_inputs),
                       loss_fn=[torch_loss, paddle_loss], atol=1e-5)

A difference fails the test with an ``AssertionError`` whose message is padiff's short
report (where the models first differ, by how much, and the source line). Nothing is printed
unless asked (``verbose=True`` prints auto_diff's whole report as it runs); the full report
is ``result.report`` either way. A mistake in the
call itself (inputs that are not a pair, models built differently) raises ``PadiffError``
as ``auto_diff`` does: the test errors instead of failing.
"""

from __future__ import annotations

from .report.tables import console_summary

__all__ = ["assert_aligned"]


def assert_aligned(model_a, model_b, inputs, **options):
    """Run :func:`padiff.auto_diff` on the two models and raise ``AssertionError`` with the
    short report when they differ; returns the (true) AlignResult when they agree.

    ``options`` are auto_diff's keyword arguments: ``loss_fn``, ``optimizer``,
    ``layer_map``, ``auto_weights``, ``steps``, ``options={...}`` and every option keyword
    (``atol``, ``rtol``, ``diff_phase``, ...). ``auto_weights`` defaults to True, as in
    auto_diff: the weights of the reference model are copied into the other one first.
    ``verbose`` defaults to False here: pass ``verbose=True`` to see the whole report.
    """
    __tracebackhide__ = True  # pytest: show the caller's line, not this helper's
    from .auto_diff import auto_diff  # local: importing padiff.testing stays cheap

    inner = options.get("options")
    if "verbose" not in options and not (isinstance(inner, dict) and "verbose" in inner):
        options["verbose"] = False  # quiet: the failure's message is the report; verbose=True prints it all
    result = auto_diff(model_a, model_b, inputs, **options)
    if not result:
        raise AssertionError(console_summary(result, color=False))
    return result
