"""What each update of the training loop computes and writes, decided once.

Besides its train line, an update may write the buffered train lines (log),
evaluate the test set and the validation split, evaluate the validation split
for stop_at_target, write a checkpoint, and end the run (its plan's last
update, or the cap a tuning trial runs under). The updates that do any of
that also compute `lbt.engine.step.FULL_DIAGNOSTICS` (a pass over the
parameters each); the others compute only what the divergence guard and the
curves need. `decide` answers all of it for one update from the run's
`Cadence` and the update's place; the loop, the update program and the
metrics buffer read that one answer.
"""

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class Cadence:
  """A run's intervals in updates (0: never) and its cap, fixed at set-up."""
  log_every: int
  eval_every: int
  checkpoint_every: int
  target_every: int  # validation evaluations for stop_at_target; 0: no target
  max_updates: int  # > 0: the run stops at this update (a tuning trial's cap)


def cadence_of(config, facts, max_updates: int) -> Cadence:
  """The cadence of a run: its config's intervals, its facts' target interval
  (stop_at_target's `every`, resolved by validation) and the caller's cap."""
  target = facts.stop_at_target
  return Cadence(config.log_every_steps, config.eval_every_steps,
                 config.checkpoint_every_steps, target["every"] if target else 0,
                 max_updates)


def _every(n: int, done: int) -> bool:
  return n > 0 and done % n == 0


@dataclasses.dataclass(frozen=True)
class UpdateActions:
  """What update `update` (counted from 1) computes and writes.

  Attributes:
    update: the update's number once done.
    log: its log interval.
    flush: the buffered train lines are written before the update evaluates
      (a log, a scheduled evaluation, a target check; a capped update's are
      written with its checkpoint, after its evaluation).
    evaluate: the test set (and the validation split) is evaluated: its
      interval, the last update or the cap.
    target_check: the validation split is evaluated for stop_at_target: its
      interval or the last update.
    checkpoint: a checkpoint is written: its interval, the last update or the cap.
    last: the plan has no update after this one.
    capped: the run stops here at its cap before the plan's end.
    full_diagnostics: the update computes and writes FULL_DIAGNOSTICS: each
      of the above that writes more than the update's train line.
  """
  update: int
  log: bool
  flush: bool
  evaluate: bool
  target_check: bool
  checkpoint: bool
  last: bool
  capped: bool
  full_diagnostics: bool

  def stop(self, reached_target: bool) -> Optional[str]:
    """Why the run stops after this update ("target", "end", "max_updates"),
    given whether its target check reached the target; None: it goes on.
    A stopping update evaluates and checkpoints."""
    if reached_target:
      return "target"
    return "end" if self.last else "max_updates" if self.capped else None

  def revised(self, cadence: Cadence, last: bool) -> "UpdateActions":
    """This update once its plan has said whether the run ends here after
    all: a noise_scale batch decision waits for the update's own estimate,
    so at such a decision point the end is known only after the update. What
    the update computed (its full diagnostics) stays as decided."""
    return dataclasses.replace(decide(cadence, self.update, last),
                               full_diagnostics=self.full_diagnostics)


def decide(cadence: Cadence, done: int, last: bool) -> UpdateActions:
  """The actions of update `done` (counted from 1); `last`: whether the plan,
  which has taken the update's slot, ends with it."""
  log = _every(cadence.log_every, done)
  scheduled_eval = _every(cadence.eval_every, done) or last
  target_check = bool(cadence.target_every) and (_every(cadence.target_every, done) or last)
  capped = 0 < cadence.max_updates <= done
  evaluate = scheduled_eval or capped
  checkpoint = _every(cadence.checkpoint_every, done) or last or capped
  return UpdateActions(
      update=done, log=log, flush=log or scheduled_eval or target_check,
      evaluate=evaluate, target_check=target_check, checkpoint=checkpoint, last=last,
      capped=capped and not last,
      full_diagnostics=log or evaluate or target_check or checkpoint)
