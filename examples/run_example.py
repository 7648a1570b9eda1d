"""The main job: align the bundled model pairs with padiff, then show what a porting bug
looks like. Run from the repository root: ``python examples/run_example.py``.

Four runs: the ResNet-style ConvNet and the Transformer encoder, each first as a correct
port (SUCCESS) and then with one deliberate mistake in the paddle port (FAILED, with the
layer named and marked in both trees). Exits 0 when padiff judged all four correctly.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import models  # noqa: E402

from padiff import auto_diff  # noqa: E402


def banner(text: str) -> None:
    print("\n" + "#" * 78 + f"\n# {text}\n" + "#" * 78)


def main() -> int:
    log_dir = os.environ.get("PADIFF_LOG_DIR", "padiff_log")
    runs = [
        ("ConvNet, a correct port", models.convnet_pair, None, models.image_inputs, True),
        ("ConvNet, the paddle port uses BatchNorm epsilon=1e-2 in its last block",
         models.convnet_pair, "bn_epsilon", models.image_inputs, False),
        ("Transformer encoder, a correct port", models.encoder_pair, None, models.token_inputs, True),
        ("Transformer encoder, the paddle port's last block uses the tanh GELU",
         models.encoder_pair, "gelu_tanh", models.token_inputs, False),
    ]
    wrong = 0
    for title, make, bug, inputs, expect in runs:
        banner(title)
        paddle_model, torch_model = make(bug=bug)
        paddle_model.eval()
        torch_model.eval()
        result = auto_diff(paddle_model, torch_model, inputs(), auto_weights=True,
                           options={"diff_phase": "both", "log_dir": log_dir})
        verdict = "as expected" if bool(result) == expect else "NOT AS EXPECTED"
        print(f"==> padiff says {'aligned' if result else 'not aligned'} ({verdict})")
        wrong += bool(result) != expect
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
