"""Study files: `get_study(arg) -> {point name: run config}`, run by `python -m lbt.study`."""
