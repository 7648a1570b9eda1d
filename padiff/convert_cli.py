"""``padiff convert``: the command line of the checkpoint converter (``convert_checkpoint``)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

from .errors import PadiffError
from .porting import PORT, REFERENCE, LayerMap, convert_checkpoint
from .weights.convert import ConvertFailed


def load_object(spec: str, what: str):
    """``module:attr`` or ``path/to/file.py:attr`` -> the attribute (called when it is a
    factory taking no arguments is wanted by the caller)."""
    if ":" not in spec:
        raise PadiffError(f"{what} must be written module:factory (e.g. my_models:build_paddle), got `{spec}`.")
    mod_name, attr = spec.rsplit(":", 1)
    try:
        if mod_name.endswith(".py") or os.sep in mod_name or "/" in mod_name:
            path = os.path.abspath(mod_name)
            if not os.path.isfile(path):
                raise PadiffError(f"{what}: the file `{mod_name}` does not exist.")
            mspec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
            module = importlib.util.module_from_spec(mspec)
            mspec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise PadiffError(f"{what}: cannot import `{mod_name}` ({exc}).") from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PadiffError(f"{what}: `{mod_name}` has no `{attr}`.")
        obj = getattr(obj, part)
    return obj


def _build_model(spec: str, what: str):
    factory = load_object(spec, what)
    if not callable(factory):
        raise PadiffError(f"{what}: `{spec}` is not callable: give a class or a function that builds the model.")
    model = factory()
    if hasattr(model, "eval"):  # both frameworks' layers: no dropout when the models are run
        model.eval()
    return model


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="padiff convert",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert a checkpoint between torch and paddle, tensor by tensor, with the rules of assign_weight "
                    "(Linear transposed, BatchNorm statistics renamed, num_batches_tracked dropped, MultiheadAttention "
                    "split, fused projections laid out as the models lay them out, ...).\n"
                    "SRC: .safetensors, a model.safetensors.index.json (shards), .pth/.bin, .pdparams, or a folder "
                    "save_pretrained wrote. DST: .safetensors (or a folder; --max-shard-size makes shards and an "
                    "index), .pdparams or .pth.\n"
                    "With both models a checkpoint converts either way (torch -> paddle, paddle -> torch); without "
                    "them a torch checkpoint is converted by the paddle model's layers or by names (the "
                    "torch2paddle recipe) and the table says which keys were guessed.",
        epilog="exit status: 0 every destination key got a value (and --verify passed), 1 some did not, the models' "
               "weights could not be paired, or --verify found a difference; 2 usage error or unusable input.\n"
               "examples:\n"
               "  padiff convert hf_llama/ llama.pdparams --torch-model my_models:hf_llama "
               "--paddle-model my_models:pd_llama --verify ids.npz --table llama.csv\n"
               "  padiff convert model_state.pdparams torch_out/ --paddle-model my_port:Net --torch-model "
               "my_ref:Net --max-shard-size 2GB")
    parser.add_argument("src", help="the checkpoint to convert (see above)")
    parser.add_argument("dst", help="the file (or folder, for safetensors) to write")
    parser.add_argument("--paddle-model", metavar="MODULE:FACTORY",
                        help="builds the paddle model (a class or function taking no arguments); keys are then "
                             "mapped by its layers")
    parser.add_argument("--torch-model", metavar="MODULE:FACTORY",
                        help="builds the torch model; with --paddle-model keys are mapped through both models")
    parser.add_argument("--from", dest="source", choices=(REFERENCE, PORT), default=None,
                        help="the framework whose layout SRC holds, when neither the file nor the models tell "
                             "(a safetensors file without a `format` in its metadata)")
    parser.add_argument("--layer-map", metavar="MODULE:FUNCTION",
                        help="function(paddle_model, torch_model) returning a padiff.LayerMap")
    parser.add_argument("--auto", action="store_true",
                        help="pair the two models' layers with LayerMap.auto (needs both models)")
    parser.add_argument("--inputs", metavar="MODULE:FACTORY",
                        help="a function returning the models' inputs as numpy arrays (a dict of keywords, a list of "
                             "positional arguments, or one array): fused layouts are then found by running the models")
    parser.add_argument("--verify", nargs="?", const=True, default=None, metavar="INPUT.npz",
                        help="after converting, load the written checkpoint into the destination model and SRC into "
                             "the source model and compare their forward on these inputs (np.savez: arr_0, arr_1, ... "
                             "positional, other names keywords; without a file, the --inputs ones); prints ALIGNED or "
                             "the first layer that differs")
    parser.add_argument("--table", metavar="OUT.csv", help="also write the table of what was done as CSV")
    parser.add_argument("--max-shard-size", metavar="SIZE",
                        help="split a .safetensors destination into shards of at most SIZE (5GB, 500MB) with a "
                             "model.safetensors.index.json")
    parser.add_argument("--dry-run", action="store_true", help="print the table, write nothing")
    return parser


def main(argv=None) -> int:
    """``padiff convert SRC DST [--paddle-model module:factory] [--torch-model module:factory] ...``;
    returns the exit status: 0 when every destination key got a value (and the check passed), 1
    when some did not, the models' weights could not be paired or the check found a difference,
    2 for a usage mistake or an input padiff cannot use."""
    args = _parser().parse_args(argv)
    try:
        paddle_model = _build_model(args.paddle_model, "--paddle-model") if args.paddle_model else None
        torch_model = _build_model(args.torch_model, "--torch-model") if args.torch_model else None
        layer_map = _layer_map(args, paddle_model, torch_model)
        inputs = _inputs(args)
        table = convert_checkpoint(args.src, None if args.dry_run else args.dst, paddle_model=paddle_model,
                                   layer_map=layer_map, torch_model=torch_model, source=args.source, inputs=inputs,
                                   verify=args.verify is not None, max_shard_size=args.max_shard_size,
                                   table_csv=args.table)
    except ConvertFailed as exc:
        print(f"padiff convert: {exc}", file=sys.stderr)
        return 1
    except PadiffError as exc:
        print(f"padiff convert: error: {exc}", file=sys.stderr)
        return 2
    return 0 if table else 1


def _layer_map(args, paddle_model, torch_model):
    """The LayerMap --layer-map builds or --auto finds, else None."""
    if not (args.layer_map or args.auto):
        return None
    if paddle_model is None or torch_model is None:
        raise PadiffError("--layer-map and --auto pair two models' layers: give --paddle-model and "
                          "--torch-model too.")
    layer_map = load_object(args.layer_map, "--layer-map")(paddle_model, torch_model) if args.layer_map \
        else LayerMap()
    if args.auto:
        layer_map.auto(paddle_model, torch_model)
    return layer_map


def _inputs(args):
    """The inputs --inputs builds or --verify names, else None."""
    inputs = None
    if args.inputs:
        factory = load_object(args.inputs, "--inputs")
        inputs = factory() if callable(factory) else factory
    if isinstance(args.verify, str):
        inputs = args.verify
    elif args.verify is True and inputs is None:
        raise PadiffError("--verify needs inputs: --verify INPUT.npz, or --inputs module:factory.")
    if args.verify is not None and args.dry_run:
        raise PadiffError("--verify loads the written checkpoint: it cannot go with --dry-run.")
    return inputs
