"""lbt: the large-batch training lab.

Layers, top to bottom, each importing only the layers below it
(tests/test_layers.py holds the contract): the commands (`lbt.main`,
`lbt.study`, `lbt.report`, `lbt.limit`); `lbt.reports`; `lbt.studies`;
`lbt.engine`; `lbt.data`, `lbt.models` and `lbt.optim`; `lbt.io`; and the
ground floor, `lbt.errors`, `lbt.registry` and `lbt.stats`, which import no
other lbt package. This module imports nothing.
"""

__version__ = "0.1.0"
