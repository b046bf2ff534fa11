"""Input pipelines: TFDS as the catalogue, array_record + grain for reading."""

from lbt.data.catalog import DATASETS, DatasetSpec, default_data_dir, register
from lbt.data.pipeline import Pipeline, load_source, prepare
