"""lbt: the large-batch training lab."""

from setuptools import find_packages, setup

setup(
    name="lbt",
    version="0.1.0",
    description="How far can the batch size of neural-network training be pushed? "
                "A JAX lab reproducing 'The Limit of the Batch Size' (You et al. 2020).",
    packages=find_packages(include=["lbt", "lbt.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.7,<0.11",
        "flax>=0.11,<0.13",
        "optax>=0.2.5,<0.3",
        "orbax-checkpoint>=0.11.20,<0.13",
        "ml-collections>=1.0,<2",
        "tensorflow-datasets>=4.9.8,<5",
        "grain>=0.2.12,<0.3",
        "array-record>=0.7",
        "importlib-resources>=6",  # needed by tensorflow-datasets without TensorFlow
        "absl-py>=2.0",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        "numpy>=1.26",
        "scipy>=1.11",  # lbt.stats.intervals: Student-t intervals over seeds
        "pillow>=10",  # lbt.data.augment resizes and crops images
        "tqdm>=4.60",  # lbt.io.metrics' progress bar
    ],
    extras_require={
        # gs:// workdirs and data dirs: etils.epath's gs:// backend, and the
        # GCS client that orbax deletes old checkpoints with and whose
        # generation preconditions make the workdir's lease (lbt.io.remote).
        "gcs": ["gcsfs", "google-cloud-storage>=2.0"],
        "test": [
            "pytest>=8", "pytest-xdist>=3",
            # tests/commands/test_colab.py executes launch/colab.ipynb's cells.
            "nbformat>=5.9", "nbclient>=0.10", "ipykernel>=6.29",
        ],
    },
)
