"""What a person reads: a study's report/report.md, lbt.limit's limit.md and
their plots, built from results.sqlite and the point workdirs. A report only
reads a study; it writes under report/ (and may rebuild results.sqlite).

May import: `lbt.studies` and everything below it (`lbt.engine`, `lbt.data`,
`lbt.models`, `lbt.optim`, `lbt.io`, the ground floor); never a command
(tests/test_layers.py).
"""
