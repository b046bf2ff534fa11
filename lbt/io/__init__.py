"""Files and processes: local and gs:// paths and whole-file writes
(`files`, `remote`), the name of every file lbt writes (`layout`), the
trainer's lease, logs, metrics.jsonl and TensorBoard, flags and config files
(`cli`), signals (`preemption`) and the fault moments tests stop a run at.

May import: the ground floor (`lbt.errors`, `lbt.registry`, `lbt.stats`) and
libraries; never the engine, data, models, optimizers, studies or reports
(tests/test_layers.py).
"""
