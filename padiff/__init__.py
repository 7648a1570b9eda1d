"""padiff: prove that a model ported between PyTorch and PaddlePaddle computes the same thing.

The core imports no framework; torch and paddle are reached through adapters, imported only
when a user's object needs them.
"""

from . import auto_diff as auto_diff_module
from .auto_diff import auto_diff, register_api
from .calibrate import Calibration, LayerNoise, calibrate
from .checks import CompareResult, check_dataloader, check_schedule, compare
from .compare.result import AlignResult, Finding, StepResult
from .dump import compare_dumps, dump, load_dump
from .errors import PadiffError, PadiffInternalError
from .options import Options, build_options
from .reprod import ReprodDiffHelper, ReprodLogger, check_checkpoints
from .porting import LayerMap, assign_weight, convert_checkpoint
from .record.spill import release_buffers
from .weights.rules import Converted, RuleError, register_rule

__all__ = [
    "auto_diff", "register_api", "assign_weight", "LayerMap", "register_rule",
    "AlignResult", "Finding", "StepResult", "Options", "build_options",
    "PadiffError", "PadiffInternalError",
    "ReprodLogger", "ReprodDiffHelper", "check_checkpoints",
    "compare", "check_dataloader", "check_schedule", "CompareResult",
    "dump", "compare_dumps", "load_dump", "convert_checkpoint", "Converted", "RuleError",
    "calibrate", "Calibration", "LayerNoise", "release_buffers",
]
__version__ = "0.1.0"
