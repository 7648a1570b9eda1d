"""``assign_weight``: copy weights across models, as the seeds describe."""

from __future__ import annotations

import sys

from ..side import make_sides
from ..report.weights import copy_failure_lines, structure_lines
from .assign import apply_copy, plan_copy


def assign_weight(first_model, second_model, layer_map=None, *, show_path: bool = False, stream=None) -> bool:
    """Copy weights from the torch model into the paddle model (whichever order they are
    given in); between two models of one framework, from the first into the second.

    Returns True on success. On failure prints the "Assign weight Failed" report (both layers,
    their parameter paths and shapes, both trees with ``<---  *** HERE ***``) and returns False,
    leaving the destination model unchanged.
    """
    from .layer_map import LayerMap

    layer_map = LayerMap.create_from(layer_map)
    sides, ref_i = make_sides(first_model, second_model)
    src, dst = sides[ref_i], sides[1 - ref_i]
    plan = plan_copy(src, dst, layer_map)
    stream = stream or sys.stdout
    if not plan.ok:
        for line in copy_failure_lines(plan, first_side=sides[0], layer_map=layer_map, show_path=show_path,
                                       header="[assign_weight]"):
            print(line, file=stream)
        return False
    for line in structure_lines(plan, header="[assign_weight]") + [f"[assign_weight] Note: {n}" for n in plan.notes]:
        print(line, file=stream)
    apply_copy(plan)
    return True
