"""Which parameters get weight decay and layer-wise adaptation.

Every lbt optimizer takes the same `exclude` argument and turns it into a mask
here, once, so that "no decay on biases and BatchNorm" means the same thing for
SGD, Adam, LARS and LAMB. The mask is True for tensors that ARE decayed and
adapted, the convention of optax's `mask=` arguments.
"""

import re
from typing import Any, Callable, Optional, Sequence, Union

import jax
import optax

from lbt.errors import ConfigError

Exclude = Optional[Union[str, Sequence[str]]]


def compile_exclude(exclude: Exclude) -> Optional[tuple]:
  """Validates `exclude` once, at construction, so a bad regex fails early.

  A single string is taken as one pattern (not as a sequence of characters).
  """
  if exclude is None:
    return None
  patterns = (exclude,) if isinstance(exclude, str) else tuple(exclude)
  compiled = []
  for pattern in patterns:
    if not isinstance(pattern, str):
      raise ConfigError("optimizer.exclude", exclude,
                        "a sequence of regex strings, or None")
    try:
      compiled.append(re.compile(pattern))
    except re.error as e:
      raise ConfigError("optimizer.exclude", exclude,
                        f"{pattern!r} is not a valid regex ({e})") from None
  return tuple(compiled)


def is_excluded(name: str, ndim: int, patterns: Optional[tuple]) -> bool:
  """None: ndim <= 1 (biases, BN scale/offset); else any re.search match."""
  if patterns is None:
    return ndim <= 1
  return any(p.search(name) for p in patterns)


def decay_and_trust_mask(exclude: Exclude = None) -> Callable[[Any], Any]:
  """Returns params -> tree of bools, True where weight decay AND the layer-wise
  trust ratio apply (one mask for both: an excluded tensor gets neither).

  A function rather than a tree so that one optimizer works for any model;
  it only reads paths ('Conv_0/kernel') and ranks, so it also works on
  `jax.eval_shape` output.
  """
  patterns = compile_exclude(exclude)

  def mask_fn(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, x: not is_excluded(
            jax.tree_util.keystr(path, simple=True, separator="/"),
            len(getattr(x, "shape", ())), patterns),
        params)

  return mask_fn


def add_decayed_weights(weight_decay: float, exclude: Exclude = None
                       ) -> optax.GradientTransformation:
  """g + weight_decay * w on non-excluded tensors; identity when decay is 0.

  Skipping the zero case keeps the state and the compiled update free of a
  no-op masked transformation.
  """
  mask = decay_and_trust_mask(exclude)  # validates `exclude` even when decay is off
  if weight_decay == 0.0:
    return optax.identity()
  return optax.add_decayed_weights(weight_decay, mask=mask)
