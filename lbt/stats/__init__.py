"""The statistics lbt's answers rest on, as pure numpy functions: steps to a
target, the critical batch's interval, the gradient noise scale, the
diffusion fits, means over seeds and their intervals.

May import: numpy and scipy, and its own modules; nothing else of lbt (it is
on the ground floor with `lbt.errors` and `lbt.registry`, tests/test_layers.py).
"""
