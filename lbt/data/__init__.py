"""Input pipelines: TFDS as the catalogue, array_record + grain for reading;
the microbatch slots a batch is cut into (`slots`).

May import: `lbt.io` and the ground floor (`lbt.errors`, `lbt.registry`,
`lbt.stats`); not `lbt.models` or `lbt.optim`, its neighbours on its
floor, nor anything above (tests/test_layers.py).
"""

from lbt.data.catalog import DATASETS, DatasetSpec, default_data_dir, register
from lbt.data.pipeline import Pipeline
from lbt.data.sources import load_source, prepare
