"""Layer-wise trust ratios: the state LARS and LAMB keep, and its statistics.

Both optimizers store the ratio each adapted tensor used in the last update, so
the training step can log the spread of per-layer learning rates (the quantity
that distinguishes them from plain momentum and Adam) without recomputing
norms. Excluded tensors hold `optax.MaskedNode()`, which has no leaves, so they
never enter the statistics.
"""

from typing import Any, Callable, Dict, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import optax


class TrustRatioState(NamedTuple):
  """Per-tensor float32 trust ratios of the last update (1 before the first)."""
  trust_ratio: Any


def init_state(params, mask) -> TrustRatioState:
  leaves, treedef = jax.tree_util.tree_flatten(params)
  ratios = [jnp.ones([], jnp.float32) if m else optax.MaskedNode()
            for m in treedef.flatten_up_to(mask)]
  return TrustRatioState(trust_ratio=treedef.unflatten(ratios))


def norm(x: jax.Array) -> jax.Array:
  """L2 norm accumulated in at least float32 (bf16 sums lose the ratio)."""
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  return jnp.sqrt(jnp.sum(x * x))


def safe_ratio(numerator, denominator, param_norm, other_norm) -> jax.Array:
  """numerator / denominator, and exactly 1 when either norm is zero.

  A zero-initialised kernel (e.g. the last BN scale or a zero-init head) would
  otherwise never move, and a zero gradient would give 0/0.
  """
  ok = jnp.logical_and(param_norm > 0, other_norm > 0)
  return jnp.where(ok, numerator / jnp.where(ok, denominator, 1), 1)


def map_layerwise(
    adapted: Callable[[jax.Array, jax.Array], Tuple[jax.Array, jax.Array]],
    excluded: Callable[[jax.Array, jax.Array], jax.Array],
    updates, params, mask) -> Tuple[Any, TrustRatioState]:
  """Applies `adapted(g, w) -> (u, ratio)` or `excluded(g, w) -> u` per leaf.

  Returns the new updates and a TrustRatioState in the layout of `init_state`.
  The mask is a tree of Python bools, so the choice is made at trace time.
  """
  grads, treedef = jax.tree_util.tree_flatten(updates)
  new_updates, ratios = [], []
  for g, w, m in zip(grads, treedef.flatten_up_to(params),
                     treedef.flatten_up_to(mask)):
    if m:
      u, ratio = adapted(g, w)
      ratios.append(ratio.astype(jnp.float32))
    else:
      u = excluded(g, w)
      ratios.append(optax.MaskedNode())
    new_updates.append(u.astype(g.dtype))
  return (treedef.unflatten(new_updates),
          TrustRatioState(trust_ratio=treedef.unflatten(ratios)))


def trust_ratio_stats(opt_state) -> Dict[str, jax.Array]:
  """Min, mean and max of the last update's trust ratios over adapted tensors.

  Works on any opt_state: it finds every TrustRatioState in the tree (so it
  sees through optax.chain, masked, inject_hyperparams, MultiSteps...). Returns
  {} for optimizers without trust ratios, or when every tensor is excluded, so
  the metrics never contain a value that is undefined.
  """
  states = jax.tree_util.tree_leaves(
      opt_state, is_leaf=lambda x: isinstance(x, TrustRatioState))
  ratios = [r for s in states if isinstance(s, TrustRatioState)
            for r in jax.tree_util.tree_leaves(s.trust_ratio)]
  if not ratios:
    return {}
  stacked = jnp.stack(ratios)
  return {
      "trust_ratio_min": jnp.min(stacked),
      "trust_ratio_mean": jnp.mean(stacked),
      "trust_ratio_max": jnp.max(stacked),
  }


def layerwise(adapted: Callable[[jax.Array, jax.Array], Tuple[jax.Array, jax.Array]],
              mask_fn: Callable) -> optax.GradientTransformation:
  """A transformation applying `adapted(g, w) -> (u, ratio)` to the tensors
  `mask_fn(params)` marks, passing the others through, and keeping the ratios
  in a TrustRatioState (LARS and LAMB differ only in `adapted`)."""

  def init_fn(params):
    return init_state(params, mask_fn(params))

  def update_fn(updates, state, params=None):
    del state
    if params is None:
      raise ValueError(optax.NO_PARAMS_MSG)
    return map_layerwise(adapted, lambda g, w: g, updates, params, mask_fn(params))

  return optax.GradientTransformation(init_fn, update_fn)
