"""Studies: many runs of one question. What each point is for (`points`),
the one runner of a study's work (plain points, searched cells,
steps-to-target protocols, the full-batch study), the learning-rate search,
and each point's outcome and results.sqlite (`results`).

May import: `lbt.engine` and everything below it (`lbt.data`, `lbt.models`,
`lbt.optim`, `lbt.io`, the ground floor); never a report or a command
(tests/test_layers.py).
"""
