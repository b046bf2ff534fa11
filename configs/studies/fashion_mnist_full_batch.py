"""Full-batch gradient descent that generalizes (Geiping et al. 2022), on the study's MLP.

  python -m lbt.study --study=configs/studies/fashion_mnist_full_batch.py \
      --workdir=studies/fashion_mnist_full_batch
  python -m lbt.study --study=configs/studies/fashion_mnist_full_batch.py:updates_per_epoch=20 \
      --workdir=studies/fashion_mnist_full_batch_u120     # twice the full-batch updates

The paper asks where a larger batch stops paying; Geiping et al. answer that
the whole training set in every update can still reach SGD's accuracy once
SGD's implicit regularization is made explicit and the optimization is made
stable. Two cells on the MLP of `configs/studies/fashion_mnist.py` (two hidden
layers of 128), trained on the 50,000 training examples left after a
10,000-example validation hold-out, their learning rates searched on that
hold-out:

- the small-batch reference: Nesterov momentum at batch SMALL_BATCH for
  SMALL_EPOCHS epochs, shuffled, cosine decay after a one-epoch warmup (the
  default study's recipe);
- the full batch: Nesterov at the full 50,000 for FULL_STEPS updates, their
  recipe scaled to this model (below).

What is taken from their CIFAR-10 recipe (`config/hyp/gradreg.yaml` of
JonasGeiping/fullbatchtraining): Nesterov momentum 0.9 with weight decay
5e-4; the full gradient clipped to L2 norm 0.25; the gradient-norm penalty of
strength α = 0.5 on the squared gradients of blocks, its coefficient
following the learning rate (λ_t = α η_t / 4: strength 0.125 with
`scale_by_learning_rate`); no shuffling (every update sees the blocks in the
same order); BatchNorm over each block (their full gradient is accumulated
over forward passes of one block each: here ghost batches of BLOCK); a linear
warmup over 400/3000 of the updates, then cosine decay; their full-batch
learning rate 0.8 as the search's first guess; their ratio of updates, 3,000
full-batch steps against the 300 epochs of their SGD baseline, i.e. 10
full-batch updates per small-batch epoch.

What changed, and why: blocks of 125 instead of 128 (50,000 = 400 x 125,
while 128 divides no microbatch of 50,000); the penalty's gradient exact
(double backpropagation in JAX) instead of forward finite differences; the
cosine laid over the run down to 0 (theirs is laid over 4,000 steps and
stopped at 3,000, at 27 % of the peak); SMALL_EPOCHS = 6 and FULL_STEPS = 60
instead of 300 epochs and 3,000 steps, so that the study fits in 20 minutes
on a 2-core CPU; no data augmentation (theirs was fixed in advance, here
there is none); weight decay off on BatchNorm and biases, as everywhere in
lbt; the learning rate searched on the validation split for both arms, as
every compared number in lbt is, instead of their tuned constants.

Each cell's search runs its trials on the validation split; its result is
the test accuracy of its validation-best trial, and SEEDS more seeds of
that learning rate measure the seed-to-seed spread. The summary
(`lbt.io.layout.FULL_BATCH` in the study directory) and its report section
(`lbt.reports.full_batch`) say whether the full batch closes the gap to the
small batch, within the seed range or 0.5 point
(`lbt.studies.full_batch.GAP_POINTS`), and at what cost in updates and
examples. The default study's report includes the section when a sibling
directory holds the summary (DIR/../*/full_batch.json).

Cost, measured (December 2026, 2-core CPU shared with other jobs, load
average about 9): 9.8 minutes for the whole study, 14 runs (5 trials and 2
seeds per cell); a full-batch update costs about
1.2 s (the penalty about doubles it), a small-batch epoch about 1.3 s.
`updates_per_epoch=20` roughly doubles the full-batch part.

References:
  Geiping, Goldblum, Pope, Moeller, Goldstein, "Stochastic Training is Not
  Necessary for Generalization", ICLR 2022, https://arxiv.org/abs/2109.14119
"""

from typing import Dict

import ml_collections

from configs.studies import fashion_mnist as default_study
from lbt.engine.config import parse_point
from lbt.errors import ConfigError
from lbt.studies import cell_search
from lbt.studies import points as points_lib

OPTIMIZER = "nesterov"
VALIDATION_EXAMPLES = default_study.VALIDATION_EXAMPLES
TRAIN_EXAMPLES = default_study.FULL_BATCH  # the training split less the hold-out
SMALL_BATCH, SMALL_EPOCHS = 128, 6.0
# Geiping et al.: 3,000 full-batch steps against 300 epochs of SGD.
UPDATES_PER_SMALL_EPOCH = 10
FULL_STEPS = int(UPDATES_PER_SMALL_EPOCH * SMALL_EPOCHS)
FULL_MICROBATCH = 10000  # 80 blocks per accumulation call
BLOCK = 125
WARMUP_SHARE = 400 / 3000
CLIP_NORM = 0.25
ALPHA = 0.5  # their block_strength; λ_t = ALPHA * η_t / 4
FULL_LEARNING_RATE = 0.8  # theirs, the full-batch search's first guess
EVALUATIONS = 10
# The searches: the rule of every searched cell in lbt (powers of two around
# the guess until bracketed, then √2 steps); the full batch's trials cost
# ~40x the small batch's, so it gets fewer. Two more seeds of each choice
# give the seed-to-seed range (3 seeds).
SMALL_TRIALS, FULL_TRIALS = 8, 5
SEEDS = (1, 2)


def _evaluate(config, updates: int) -> None:
  config.eval_every_steps = max(1, updates // EVALUATIONS)


def small_batch(epochs: float = SMALL_EPOCHS) -> ml_collections.ConfigDict:
  """The small-batch reference: the default study's point, with the hold-out."""
  config = default_study.point(OPTIMIZER, SMALL_BATCH, epochs)
  config.dataset.validation_examples = VALIDATION_EXAMPLES
  _evaluate(config, int(epochs * (TRAIN_EXAMPLES // SMALL_BATCH)))
  return config


def full_batch(steps: int = FULL_STEPS) -> ml_collections.ConfigDict:
  """Geiping et al.'s full-batch recipe scaled to the MLP (module docstring)."""
  config = default_study.point(OPTIMIZER, TRAIN_EXAMPLES, float(steps))
  config.dataset.validation_examples = VALIDATION_EXAMPLES
  config.dataset.shuffle = False
  config.microbatch_size = FULL_MICROBATCH
  config.bn.ghost_size = BLOCK
  config.optimizer.update(learning_rate=FULL_LEARNING_RATE, scaling="none",
                          clip_norm=CLIP_NORM)
  config.loss.gradient_penalty = dict(strength=ALPHA / 4, block=BLOCK,
                                      scale_by_learning_rate=True)
  # One update per epoch: epochs count updates.
  config.schedule = dict(name="cosine", warmup_epochs=float(round(WARMUP_SHARE * steps)),
                         end_learning_rate=0.0)
  _evaluate(config, steps)
  return config


def get_study(arg: str = None) -> Dict[str, points_lib.Point]:
  """The two searched cells, each rerun with SEEDS at its chosen learning rate.

  `updates_per_epoch=N` (the argument after ':') trains the full batch for N
  updates per small-batch epoch instead of UPDATES_PER_SMALL_EPOCH (Geiping
  et al.'s ratio); its cells are others, `...-full-u<steps>`.
  """
  ratio = parse_point(arg, updates_per_epoch=UPDATES_PER_SMALL_EPOCH).updates_per_epoch
  if ratio < 1:
    raise ConfigError("config argument 'updates_per_epoch'", ratio, "an integer >= 1")
  steps = int(ratio * SMALL_EPOCHS)
  small = f"{OPTIMIZER}-b{SMALL_BATCH}"
  full = f"{OPTIMIZER}-b{TRAIN_EXAMPLES}-full" + ("" if steps == FULL_STEPS else f"-u{steps}")
  return {
      small: points_lib.point(small_batch(), "full_batch", cell=small, search=cell_search.Search(
          max_trials=SMALL_TRIALS, seeds=SEEDS)),
      full: points_lib.point(full_batch(steps), "full_batch", cell=full,
                             search=cell_search.Search(max_trials=FULL_TRIALS, seeds=SEEDS)),
  }
