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
  """Ratios of 1 where `mask` is True, MaskedNode elsewhere: the layout that
  `layerwise` keeps, for optimizers that write their own update."""
  _, treedef = jax.tree_util.tree_flatten(params)
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


def record_ratios(adapted: Callable[[jax.Array, jax.Array], Tuple[jax.Array, jax.Array]]
                  ) -> optax.GradientTransformation:
  """Applies `adapted(g, w) -> (u, ratio)` to every leaf and keeps each ratio.

  Meant to run inside `optax.masked` (see `layerwise`): excluded tensors are
  MaskedNodes there, so they have neither an update here nor a stored ratio.
  """

  def init_fn(params):
    return TrustRatioState(trust_ratio=jax.tree.map(
        lambda _: jnp.ones([], jnp.float32), params))

  def update_fn(updates, state, params=None):
    del state
    if params is None:
      raise ValueError(optax.NO_PARAMS_MSG)
    grads, treedef = jax.tree_util.tree_flatten(updates)
    pairs = [adapted(g, w) for g, w in zip(grads, treedef.flatten_up_to(params))]
    new_updates = [u.astype(g.dtype) for (u, _), g in zip(pairs, grads)]
    ratios = [ratio.astype(jnp.float32) for _, ratio in pairs]
    return (treedef.unflatten(new_updates),
            TrustRatioState(trust_ratio=treedef.unflatten(ratios)))

  return optax.GradientTransformation(init_fn, update_fn)


def layerwise(adapted: Callable[[jax.Array, jax.Array], Tuple[jax.Array, jax.Array]],
              mask_fn: Callable, *then: optax.GradientTransformation
              ) -> optax.GradientTransformation:
  """`record_ratios(adapted)` and then `then`, on the tensors `mask_fn` marks.

  optax.masked passes the other tensors through unchanged. LARS gives the
  whole rule as `adapted`; LAMB records its ratio there and scales with
  optax.scale_by_trust_ratio in `then`.
  """
  inner = record_ratios(adapted)
  return optax.masked(optax.chain(inner, *then) if then else inner, mask_fn)
