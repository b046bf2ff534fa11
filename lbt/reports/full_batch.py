"""The report section of a full-batch study: does the full batch close the gap?

Geiping et al. (ICLR 2022) reach SGD's accuracy with full-batch gradient
descent by clipping the full gradient, adding an explicit gradient-norm
penalty and training for many more updates. A full-batch study
(configs/studies/fashion_mnist_full_batch.py) runs their recipe scaled to the
study's MLP beside a small-batch reference, each with its learning rate
searched on the validation split; when the study ends its runner writes the
answer to DIR/full_batch.json (`layout.FULL_BATCH`).

The summary is written by the study runner when the study ends; a report
only reads it: its own directory's, then those of the study directories the
report was told to include (`lbt.report DIR --include=OTHER`), in that
order. One that cannot be shown (another version's, or damaged) is named in
one line instead of stopping the report; with none, the section is left out.
Whether the full batch closes the gap is decided by the interval rule of
`lbt.reports.compare` over each arm's seeds (its chosen run and reruns).

What the section says was taken from their recipe and what was changed is
read from the runs' configs (optimizer, clipping, penalty, BatchNorm blocks,
order, schedule) and from this implementation (the penalty's gradient is
exact, the learning rates are searched).

References:
  Geiping, Goldblum, Pope, Moeller, Goldstein, "Stochastic Training is Not
  Necessary for Generalization", ICLR 2022, https://arxiv.org/abs/2109.14119
"""

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

from lbt.io import files, layout
from lbt.reports import compare, plots
from lbt.stats import intervals

# Their CIFAR-10 recipe (config/hyp/gradreg.yaml of JonasGeiping/fullbatchtraining).
THEIRS = {"steps": 3000, "sgd_epochs": 300, "warmup": 400, "cosine_steps": 4000,
          "learning_rate": 0.8, "clip_norm": 0.25, "alpha": 0.5, "block": 128,
          "momentum": 0.9, "weight_decay": 5e-4}


def read_summary(path: str) -> Optional[dict]:
  """A full_batch.json as written, or None when it is missing or not a summary."""
  text = files.read_text(path)
  try:
    summary = None if text is None else json.loads(text)
  except ValueError:
    return None
  return summary if isinstance(summary, dict) and "arms" in summary else None


def summaries(workdir: str, include: Sequence[str] = ()) -> List[Tuple[str, dict]]:
  """(label, summary) of DIR/full_batch.json, then of each included study's."""
  found = []
  for directory in (workdir, *include):
    summary = read_summary(os.path.join(directory, layout.FULL_BATCH))
    if summary is not None:
      found.append((files.path(directory).name, summary))
  return found


def arm_estimate(arm: dict) -> Optional[intervals.Estimate]:
  """Test accuracy over the arm's chosen run and its seed reruns, paired by
  seed where every run names one."""
  runs = [r for r in [arm.get("chosen")] + list(arm.get("seeds") or [])
          if r and r.get("status") == "finished" and r.get("test_accuracy") is not None]
  if not runs:
    return None
  seeds = [r.get("seed") for r in runs]
  return intervals.mean_interval([r["test_accuracy"] for r in runs],
                                 seeds=seeds if None not in seeds else None)


def gap_verdict(arms: Dict[str, dict]) -> Optional[Tuple[str, str]]:
  """(closes / does not close / undecided, the difference in words) of the
  full batch against the small batch; None until both arms finished."""
  small, full = (arm_estimate(arms[a]) if arms.get(a) else None for a in ("small", "full"))
  if small is None or full is None:
    return None
  words = compare.difference_text(full, small)
  if compare.relation(full, small) == compare.BELOW:
    return "does not close", words
  if compare.untestable(full, small):
    return "cannot be told from one seed whether it closes", words
  return "closes", words


def _pct(run: Optional[dict]) -> str:
  return plots.pct(run["test_accuracy"]) if run and run["status"] == "finished" else (
      run["status"] if run else "—")


def _search(arm: dict) -> str:
  chosen = arm["chosen"]
  if chosen is None:
    return "—"
  reason = arm.get("reason") or arm.get("bracket") or "no reason recorded"
  flag = "" if arm.get("bracketed") else f" **not bracketed: {reason}**"
  return f"{chosen['learning_rate']:.4g} of {len(arm['trials'])} trials{flag}"


def _mean(arm: dict) -> str:
  estimate = arm_estimate(arm)
  return "—" if estimate is None else estimate.text()


def table(arms: Dict[str, dict]) -> str:
  """One row per arm: its search, its cost and its accuracy."""
  lines = ["| arm | batch | learning rate (searched) | updates | examples | test accuracy (%) "
           "| mean over seeds (%) | wall time of the run (s) |",
           "|---|---|---|---|---|---|---|---|"]
  for name, label in (("small", "small-batch reference"), ("full", "full batch (recipe)")):
    arm = arms.get(name)
    if arm is None:
      lines.append(f"| {label} | — | — | — | — | not in this study | — | — |")
      continue
    run = arm["chosen"] or {}
    lines.append(f"| {label} | {arm['batch']:,} | {_search(arm)} | {run.get('updates') or '—'} "
                 f"| {run.get('examples') or 0:,} | {_pct(arm['chosen'])} | {_mean(arm)} "
                 f"| {run.get('wall_time_s') or 0:.0f} |")
  return "\n".join(lines)


def recipe_text(arms: Dict[str, dict]) -> str:
  """What was taken from Geiping et al.'s recipe and what was changed, from
  the full arm's config."""
  full, small = arms.get("full"), arms.get("small")
  if full is None:
    return ""
  recipe, penalty = full["recipe"], full["recipe"]["gradient_penalty"] or {}
  steps = (full["chosen"] or full["trials"][0])["updates"] or 0
  warmup = recipe["schedule"].get("warmup_epochs", 0)
  block = penalty.get("block")
  taken = [f"{recipe['optimizer']} momentum {recipe['momentum']} and weight decay "
           f"{recipe['weight_decay']:g}",
           f"the full gradient clipped to L2 norm {recipe['clip_norm']:g}"]
  if penalty:
    strength = penalty["strength"]
    coefficient = (f"λ_t = {strength:g} η_t (their α = {4 * strength:g}: λ_t = α η_t / 4)"
                   if penalty.get("scale_by_learning_rate") else f"λ = {strength:g}")
    taken.append(f"the gradient-norm penalty λ/2 · mean ‖∇L_block‖² on blocks of {block} "
                 f"examples, {coefficient}")
  if recipe["ghost_size"]:
    taken.append(f"BatchNorm over each block (ghost batches of {recipe['ghost_size']}), as "
                 "their full gradient is accumulated block by block")
  if not recipe["shuffle"]:
    taken.append("no shuffling: every update sees the same blocks")
  taken.append(f"a linear warmup over {warmup:g} of {steps} updates (theirs "
               f"{THEIRS['warmup']} of {THEIRS['steps']}), then cosine decay")
  changed = []
  if block and block != THEIRS["block"]:
    changed.append(f"blocks of {block}, not {THEIRS['block']} (a block must divide the "
                   "microbatch)")
  changed.append("the penalty's gradient exact (double backpropagation), not forward "
                 "finite differences")
  changed.append(f"cosine decay to 0 over the run (theirs is laid over "
                 f"{THEIRS['cosine_steps']} steps and stopped at {THEIRS['steps']})")
  if small is not None and small["chosen"] and full["chosen"]:
    per_epoch = full["chosen"]["updates"] / max(small["chosen"]["epochs"] or 1, 1e-9)
    changed.append(f"{steps} full-batch updates against {small['chosen']['epochs']:g} "
                   f"small-batch epochs ({per_epoch:.3g} per epoch; theirs "
                   f"{THEIRS['steps']} against {THEIRS['sgd_epochs']}, 10 per epoch)")
  changed.append(f"learning rates searched on the validation split for both arms "
                 f"(theirs: {THEIRS['learning_rate']} for the full batch, tuned by hand)")
  return ("Taken from their CIFAR-10 recipe: " + "; ".join(taken) + ". Changed: "
          + "; ".join(changed) + ".")


def verdict_text(summary: dict) -> str:
  """Whether the gap closes, and at what cost in updates and examples."""
  arms = summary["arms"]
  verdict = gap_verdict(arms)
  if verdict is None:
    return ("The study has not finished both arms: no verdict yet (rerun the study "
            "command to finish it).")
  small, full = arms["small"]["chosen"], arms["full"]["chosen"]
  text = [f"**The full batch {verdict[0]} the gap** to batch {arms['small']['batch']:,}: "
          f"its mean test accuracy against the small batch's, {verdict[1]}."]
  ratio = lambda key: f"{full[key] / small[key]:.3g}×"
  text.append(f"Cost: {full['updates']} updates against {small['updates']} "
              f"({ratio('updates')}) and {full['examples']:,} examples against "
              f"{small['examples']:,} ({ratio('examples')}); each full-batch "
              "example costs a gradient and a Hessian-vector product (the penalty): "
              f"{_seconds(full, 'updates')} s per update and {_seconds(full, 'examples', 1e6)} "
              f"µs per example against {_seconds(small, 'updates')} s and "
              f"{_seconds(small, 'examples', 1e6)} µs. With their searches and seeds the arms "
              f"took {arms['full']['search_wall_time_s'] / 60:.1f} and "
              f"{arms['small']['search_wall_time_s'] / 60:.1f} min of training.")
  curve = full.get("curve") or []
  if len(curve) >= 3:
    tail = curve[-max(2, len(curve) * 3 // 10):]
    change = 100 * (tail[-1][1] - tail[0][1])
    text.append(f"Over its last {tail[-1][0] - tail[0][0]} updates the full batch's test "
                f"accuracy moved {change:+.2f} points ("
                + ("still rising: more updates would help" if change > 0.1 else "flat")
                + ").")
  return " ".join(text)


def _seconds(run: dict, per: str, unit: float = 1.0) -> str:
  """The run's wall time per update or per example, in `1/unit` seconds."""
  return f"{unit * (run['wall_time_s'] or 0) / max(run[per] or 1, 1):.3g}"


def plot(summary: dict, report_dir: str, name: str) -> str:
  """Test accuracy against examples seen, both arms' chosen runs."""
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(7, 3.5))
  for arm_name, arm in sorted(summary["arms"].items()):
    run = arm["chosen"]
    if run and run["curve"]:
      steps, accuracy = zip(*run["curve"])
      ax.plot([s * arm["batch"] for s in steps], [100 * a for a in accuracy], "o-", ms=3,
              label=f"{arm_name} (B={arm['batch']:,}, LR {run['learning_rate']:.3g})")
  ax.set_xscale("log")
  ax.set(xlabel="examples seen", ylabel="test accuracy (%)",
         title="Full batch (Geiping et al.'s recipe) vs small batch")
  plots.legend(ax, fontsize=7)
  return plots.save(fig, report_dir, name)


def section(summary: dict, label: str, report_dir: str, index: int = 0) -> str:
  """The section for one summary, `label` naming the study it comes from."""
  image = plot(summary, report_dir, f"full_batch_{index}.png")
  return (f"## Full-batch gradient descent that generalizes? (`{label}`)\n\n"
          "Geiping et al. (2022) reach SGD's accuracy with full-batch gradient descent by "
          "clipping the gradient, penalizing the gradient norms of small blocks (SGD's "
          "implicit regularizer made explicit) and training for many more updates. Here "
          "their recipe, scaled to this model, against a small-batch reference; each "
          "arm's learning rate is the validation-best of its search (the test set only "
          "reports).\n\n" + table(summary["arms"]) + f"\n\n{image}\n\n"
          + verdict_text(summary) + "\n\n" + recipe_text(summary["arms"]) + "\n")


def section_for(workdir: str, include: Sequence[str], report_dir: str) -> str:
  """The full-batch sections of a report: this study's own answer
  (DIR/full_batch.json as the runner wrote it), then each included
  study's; "" when there is none."""
  texts = []
  for index, (label, summary) in enumerate(summaries(workdir, include)):
    try:
      texts.append(section(summary, label, report_dir, index))
    except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError) as e:
      texts.append(f"## Full-batch gradient descent (`{label}`)\n\nIts {layout.FULL_BATCH} "
                   f"could not be shown ({type(e).__name__}: {e}); rerun the study command "
                   f"on `{label}` to rewrite it.\n")
  return "\n".join(texts)
