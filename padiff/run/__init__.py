"""The run pipeline every front door drives: prepare the inputs, record each side, compare one
step, train one step, and add the step to the result (``auto_diff``, ``padiff.dump``,
``compare_dumps``, ``calibrate``).

Framework-free: models are reached through their adapters only. What is printed lives in
``padiff.report.run``.
"""
