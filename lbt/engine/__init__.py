"""The training engine of one run: its config's fields (`schema`), their
validation (`config`, RunFacts), the batch plan, the jitted sharded update and
evaluation, the training loop, checkpoints and the workdir it holds.

May import: `lbt.data`, `lbt.models`, `lbt.optim`, `lbt.io` and the ground
floor (`lbt.errors`, `lbt.registry`, `lbt.stats`); never a study, a report or
a command (tests/test_layers.py).
"""
