"""The on-disk layout of a dump, and the checks that refuse a dump that is not whole.

A dump is a folder::

    run_torch/
        manifest.json        # everything but the arrays; "complete": true once finished
        inputs/i0.npy        # the model's inputs
        weights/t0.npy ...   # every parameter and buffer before the first step
        steps/0/n3_out0.npy  # layer/API outputs, output/input gradients, loss,
        steps/0/grad_t0.npy  #   parameter gradients and (with an optimizer) the
        steps/0/w_t0.npy     #   weights after the step, one folder per step

It is written into ``run_torch.partial-<pid>/`` and renamed to ``run_torch/`` only when
complete, so a reader never sees half a dump. The full description is docs/dump-format.md.
"""

from __future__ import annotations

import glob
import json
import os
from typing import List

from ..errors import PadiffError

FORMAT = "padiff-dump"
VERSION = 1
MANIFEST = "manifest.json"
PARTIAL = ".partial-"

_REDO = "Re-run padiff.dump(model, inputs, path) to make the dump again."


def partial_path(path: str, pid: int) -> str:
    return f"{path}{PARTIAL}{pid}"


def partials_of(path: str) -> List[str]:
    """Leftover (or in-progress) partial folders of a dump path."""
    return sorted(glob.glob(glob.escape(path) + PARTIAL + "*"))


def partial_pid(partial: str) -> int:
    try:
        return int(partial.rsplit(PARTIAL, 1)[1])
    except (IndexError, ValueError):
        return -1


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def is_padiff_manifest(file: str) -> bool:
    """Whether ``file`` is a padiff dump's manifest (finished or not): what a dump may replace."""
    try:
        with open(file, encoding="utf-8") as fh:
            return json.load(fh).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_manifest(path: str) -> dict:
    """The manifest of the complete dump at ``path``; a PadiffError for anything else: a
    missing folder, an interrupted or unfinished dump, another format, a newer version."""
    path = os.fspath(path)
    shown = path.rstrip(os.sep) or path
    partials = [p for p in partials_of(path.rstrip(os.sep)) if os.path.isdir(p)]
    if not os.path.exists(path):
        if partials:
            raise PadiffError(
                f"The padiff dump `{shown}` was interrupted: only the unfinished folder `{partials[-1]}` "
                f"exists (the dumping process was killed, or ran out of memory or disk, before it finished). "
                f"{_REDO} (It removes the unfinished folder.)")
        raise PadiffError(f"There is no padiff dump at `{shown}`: the folder does not exist. Make one with "
                          "padiff.dump(model, inputs, path).")
    if not os.path.isdir(path):
        raise PadiffError(f"`{shown}` is a file, not a padiff dump folder. Make a dump with "
                          "padiff.dump(model, inputs, path).")
    if partials:
        running = [p for p in partials if pid_alive(partial_pid(p))]
        raise PadiffError(
            f"A newer padiff dump into `{shown}` was interrupted or is still running: `{partials[-1]}` is "
            f"left{' (its process is still alive)' if running else ''}, so `{shown}` may not be the run you "
            f"mean. {_REDO} (It removes the unfinished folder.) Or delete `{partials[-1]}` to use the "
            "earlier dump.")
    file = os.path.join(path, MANIFEST)
    if not os.path.isfile(file):
        raise PadiffError(
            f"`{shown}` holds no {MANIFEST}: it is not a padiff dump, or writing it was interrupted. {_REDO}")
    try:
        with open(file, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except (OSError, ValueError) as exc:
        raise PadiffError(f"The manifest of the padiff dump `{shown}` cannot be read ({exc}): the dump was "
                          f"interrupted or damaged. {_REDO}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PadiffError(f"`{file}` is not the manifest of a padiff dump (its format is not {FORMAT!r}).")
    version = manifest.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise PadiffError(f"The dump `{shown}` has format version {version!r}, made by a newer padiff; this "
                          f"padiff reads version {VERSION}. Upgrade padiff to compare it.")
    if manifest.get("complete") is not True:
        raise PadiffError(
            f"The padiff dump `{shown}` is incomplete: its writing was interrupted (the process was killed, or "
            f"ran out of memory or disk) before it finished, so its arrays cannot be trusted. {_REDO}")
    return manifest


def manifest_files(manifest: dict) -> List[str]:
    """Every array file the manifest refers to."""
    out: List[str] = []

    def visit(x):
        if isinstance(x, dict):
            f = x.get("file")
            if isinstance(f, str):
                out.append(f)
            for v in x.values():
                if isinstance(v, (dict, list)):
                    visit(v)
        elif isinstance(x, list):
            for v in x:
                if isinstance(v, (dict, list)):
                    visit(v)

    visit(manifest)
    return out
