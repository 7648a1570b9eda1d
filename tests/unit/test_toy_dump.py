"""Recording in one process and comparing in another (padiff/dump) with toy models: the dump
reader stands in for the toy adapter, and the verdict is the live run's."""

import os

from padiff import compare_dumps, dump, load_dump
from toy_models import pair


def test_dumps_of_two_toy_models_compare_as_the_live_run_does(tmp_path):
    base, raw, inputs = pair(factor=1.01)
    for (_, p), q in zip(base.named_parameters(), raw.parameters()):  # dumps copy no weights
        q.set_(p.data)
    a, b = dump(base, inputs[0], str(tmp_path / "a")), dump(raw, inputs[1], str(tmp_path / "b"))
    assert os.path.isdir(a) and load_dump(a).framework == "toy"
    result = compare_dumps(a, b, verbose=False)
    assert not result and result.report.splitlines()[-1] == "[AutoDiff] FAILED !!!"
    assert (result.first.stage, result.first.ref_path) == (
        "forward", "Net.block.scale > padiff.frameworks.toyfw.Tensor.__mul__")
    assert compare_dumps(a, a, verbose=False)
