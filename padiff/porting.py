"""Front doors of weight porting: ``assign_weight``, ``padiff.LayerMap`` (with ``auto``'s
printout) and ``convert_checkpoint``.

They take the user's models, hand them to the framework-free machinery of ``padiff.weights``
(plans, matching and the checkpoint converter return data) and print what it found with the
renderers of ``report/weights.py``. The converter's public keywords name the two frameworks
(``torch_model``, ``paddle_model``): here they become the reference and the port of
``weights.convert.Frameworks``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import List

from .auto_diff import auto_diff
from .errors import PadiffError
from .frameworks import get_adapter
from .report.weights import (auto_table_lines, convert_table_lines, convert_verify_line, copy_failure_lines,
                             structure_lines, write_convert_csv)
from .side import make_sides
from .weights import layer_map as layer_map_mod
from .weights.assign import apply_copy, plan_copy
from .weights.auto_map import auto_pairs
from .weights.checkpoint import Checkpoint, open_checkpoint, parse_size
from .weights.convert import ConvertFailed, Frameworks, convert, inputs_for, load_inputs
from .weights.convert_table import ConvertTable, last_name

REFERENCE, PORT = "torch", "paddle"  # the converter's two frameworks: its keywords name them


class LayerMap(layer_map_mod.LayerMap):
    __doc__ = layer_map_mod.LayerMap.__doc__

    def auto(self, a, b, *, stream=None):
        """Pair the sublayers of models ``a`` and ``b`` by structure (kinds and parameter
        shapes, transposes allowed; tolerant of order differences and of wrapper layers),
        print the pairs and the layers left without a partner, and record the pairs here.
        Returns an ``AutoResult``, true when every layer with weights found a partner."""
        res = auto_pairs(self, a, b)
        for line in auto_table_lines(res):
            print(line, file=stream or sys.stdout)
        return res


def assign_weight(first_model, second_model, layer_map=None, *, show_path: bool = False, stream=None) -> bool:
    """Copy weights from the torch model into the paddle model (whichever order they are
    given in); between two models of one framework, from the first into the second.

    Returns True on success. On failure prints the "Assign weight Failed" report (both layers,
    their parameter paths and shapes, both trees with ``<---  *** HERE ***``) and returns False,
    leaving the destination model unchanged.
    """
    layer_map = LayerMap.create_from(layer_map)
    sides, ref_i = make_sides(first_model, second_model)
    src, dst = sides[ref_i], sides[1 - ref_i]
    plan = plan_copy(src, dst, layer_map)
    stream = stream or sys.stdout
    if not plan.ok:
        for line in copy_failure_lines(plan, first_side=sides[0], show_path=show_path, header="[assign_weight]"):
            print(line, file=stream)
        return False
    for line in structure_lines(plan, header="[assign_weight]") + [f"[assign_weight] Note: {n}" for n in plan.notes]:
        print(line, file=stream)
    apply_copy(plan)
    return True


def convert_checkpoint(src_path, dst_path=None, paddle_model=None, layer_map=None, torch_model=None, *,
                       source=None, inputs=None, verify: bool = False, max_shard_size=None,
                       table_csv=None, verbose: bool = True, stream=None) -> ConvertTable:
    """Convert a checkpoint between torch and paddle, tensor by tensor, and write it at
    ``dst_path`` (nothing is written when ``dst_path`` is None).

    ``src_path``: a ``.safetensors`` file, a safetensors index (``model.safetensors.index.json``),
    a ``.pth``/``.bin``, a ``.pdparams``, a folder ``save_pretrained`` wrote, or a state dict.
    ``source`` ("torch" or "paddle"): which framework's layout it holds, when neither the file
    nor the models tell. ``dst_path``: ``.safetensors`` (or a folder: ``model.safetensors``
    there; ``max_shard_size`` such as ``"2GB"`` splits it into shards with an index),
    ``.pdparams`` or ``.pth``. With both models the keys are mapped by the models' layers with
    the same pairing, rules and fused layouts as ``assign_weight``, in either direction; with
    the paddle model only, or no model, a torch checkpoint is converted by the paddle model's
    layers or by names (the seeds' torch2paddle recipe), saying which keys were guessed.

    ``inputs`` (numpy arrays: a dict of keywords, a list of positional arguments, one array,
    or a ``.npz``/``.npy`` path) let fused layouts be found by running both models; with
    ``verify=True`` the converted file is loaded back into the destination model, the
    checkpoint into the source model (both models keep those weights), and ``auto_diff``
    compares their forward on the inputs. Prints a table of what was copied, transposed,
    renamed, split, fused, dropped or left unmatched (``table_csv``: also as CSV) and returns
    it as a :class:`ConvertTable`, true when every destination key got a value and the check,
    if asked for, passed.
    """
    stream = stream or sys.stdout
    layer_map = LayerMap.create_from(layer_map)
    max_shard_size = parse_size(max_shard_size)
    inputs = load_inputs(inputs) if inputs is not None else None
    _check_request(dst_path, paddle_model, torch_model, inputs, verify)
    fw = Frameworks(get_adapter(REFERENCE), get_adapter(PORT), torch_model, paddle_model)
    try:
        table, read_back = convert(src_path, dst_path, fw, layer_map=layer_map, source=source, inputs=inputs,
                                   max_shard_size=max_shard_size)
    except ConvertFailed as exc:
        for line in copy_failure_lines(exc.plan, first_side=_first_side(exc.plan, paddle_model),
                                       header="[padiff convert]"):
            print(line, file=stream)
        raise
    if table.plan is not None:
        for line in structure_lines(table.plan, header="[padiff convert]"):
            print(line, file=stream)
    if verbose:
        for note in table.notes:
            print(f"[padiff convert] Note: {note}", file=stream)
        for line in convert_table_lines(table):
            print(line, file=stream)
    if table_csv is not None:
        write_convert_csv(table, os.fspath(table_csv))
    if verify and read_back is not None:
        _verify(table, src_path, source, read_back, fw, layer_map, inputs, stream)
        if verbose:
            print(convert_verify_line(table), file=stream)
    return table


def _first_side(plan, first_model):
    """The side of the model the user gave first (the paddle model), which the report draws first."""
    return plan.src if plan.src.model is first_model else plan.dst


def _check_request(dst_path, paddle_model, torch_model, inputs, verify) -> None:
    """What the keywords ask for fits together."""
    if verify and inputs is None:
        raise PadiffError("verify runs both models on inputs: give inputs (a .npz path or arrays; --verify "
                          "INPUT.npz or --inputs module:factory).")
    if (verify or inputs is not None) and (paddle_model is None or torch_model is None):
        raise PadiffError("Inputs run the two models: give both paddle_model and torch_model (--paddle-model and "
                          "--torch-model) with them.")
    if verify and dst_path is None:
        raise PadiffError("verify loads the converted checkpoint into the destination model: give a destination "
                          "(not a dry run).")


def _assign(side, ckpt: Checkpoint) -> List[str]:
    """Load a checkpoint into a model, tensor by tensor; the model's keys it has no value for."""
    ad, missing = side.adapter, []
    for key, t in ad.state_items(side.model):
        if key in ckpt:
            ad.assign_raw(t, ckpt.array(key), ckpt.info(key).dtype)
        else:
            missing.append(key)
    return missing


def _verify(table: ConvertTable, src_path, source, read_back, fw: Frameworks, layer_map, inputs, stream) -> None:
    """The check after converting: the checkpoint loaded into the source model, the written file
    into the destination model, and ``auto_diff`` on their forward (both models keep those
    weights)."""
    sides = {s.adapter.name: s for s in make_sides(fw.port_model, fw.ref_model)[0]}
    src_side, dst_side = sides[table.src_framework], sides[table.dst_framework]
    with open_checkpoint(src_path, framework=source) as ckpt:
        missing = _assign(src_side, ckpt)
    with open_checkpoint(read_back, framework=table.dst_framework) as written:
        missing += _assign(dst_side, written)
    skipped = fw.skipped()
    missing = [k for k in missing if last_name(k) not in skipped]
    pd_in, pt_in = inputs_for(fw.port, inputs), inputs_for(fw.ref, inputs)
    redirect = contextlib.redirect_stdout(stream) if stream is not sys.stdout else contextlib.nullcontext()
    with redirect:
        result = auto_diff(fw.port_model, fw.ref_model, (pd_in, pt_in), layer_map=layer_map, auto_weights=False,
                           diff_phase="forward")
    table.verified, table.verified_from, table.kept_own = result, read_back, missing
