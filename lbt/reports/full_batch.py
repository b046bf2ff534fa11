"""The report section of a full-batch study: does the full batch close the gap?

Geiping et al. (ICLR 2022) reach SGD's accuracy with full-batch gradient
descent by clipping the full gradient, adding an explicit gradient-norm
penalty and training for many more updates. A full-batch study
(configs/studies/fashion_mnist_full_batch.py) runs their recipe scaled to the
study's MLP beside a small-batch reference, each with its learning rate
searched on the validation split; `lbt.studies.full_batch` writes its answer
to DIR/full_batch.json (`layout.FULL_BATCH`).

Which summaries a report shows (`summaries`): its own directory's, then
those of its sibling study directories (with a study.json),
DIR/../*/full_batch.json, in name order; one that cannot be shown (another
version's, or damaged) is named in one line instead of stopping the report.
So the default study's report includes the full-batch answer when the two
studies sit side by side, e.g. studies/fashion_mnist and
studies/fashion_mnist_full_batch; with none, the section is left out.

What the section says was taken from their recipe and what was changed is
read from the runs' configs (optimizer, clipping, penalty, BatchNorm blocks,
order, schedule) and from this implementation (the penalty's gradient is
exact, the learning rates are searched).

References:
  Geiping, Goldblum, Pope, Moeller, Goldstein, "Stochastic Training is Not
  Necessary for Generalization", ICLR 2022, https://arxiv.org/abs/2109.14119
"""

from typing import Dict, List, Optional, Sequence, Tuple

from lbt.io import files, layout
from lbt.reports import plots
from lbt.studies import full_batch as summary_lib

# Their CIFAR-10 recipe (config/hyp/gradreg.yaml of JonasGeiping/fullbatchtraining).
THEIRS = {"steps": 3000, "sgd_epochs": 300, "warmup": 400, "cosine_steps": 4000,
          "learning_rate": 0.8, "clip_norm": 0.25, "alpha": 0.5, "block": 128,
          "momentum": 0.9, "weight_decay": 5e-4}


def summaries(workdir: str) -> List[Tuple[str, dict]]:
  """(label, summary) of DIR/full_batch.json, then of DIR/../*/full_batch.json."""
  here = files.path(workdir)
  found = []
  own = summary_lib.read(str(here / layout.FULL_BATCH))
  if own is not None:
    found.append((here.name, own))
  try:
    siblings = sorted(here.parent.glob(f"*/{layout.FULL_BATCH}"))
  except OSError:  # an unreadable parent: no siblings to show
    siblings = []
  for path in siblings:  # study directories only (their study.json), not any folder
    if path.parent.name != here.name and (path.parent / layout.STUDY).exists():
      summary = summary_lib.read(str(path))
      if summary is not None:
        found.append((path.parent.name, summary))
  return found


def _pct(run: Optional[dict]) -> str:
  return plots.pct(run["test_accuracy"]) if run and run["status"] == "finished" else (
      run["status"] if run else "—")


def _search(arm: dict) -> str:
  chosen = arm["chosen"]
  if chosen is None:
    return "—"
  flag = "" if arm["bracketed"] else f" **not bracketed: {arm['bracket']}**"
  return f"{chosen['learning_rate']:.4g} of {len(arm['trials'])} trials{flag}"


def _spread(arm: dict) -> str:
  spread = arm["seed_range_points"]
  return "—" if spread is None else f"{spread:.2f} ({len(arm['seeds']) + 1} seeds)"


def table(arms: Dict[str, dict]) -> str:
  """One row per arm: its search, its cost and its accuracy."""
  lines = ["| arm | batch | learning rate (searched) | updates | examples | test accuracy (%) "
           "| seed range (points) | wall time of the run (s) |",
           "|---|---|---|---|---|---|---|---|"]
  for name, label in (("small", "small-batch reference"), ("full", "full batch (recipe)")):
    arm = arms.get(name)
    if arm is None:
      lines.append(f"| {label} | — | — | — | — | not in this study | — | — |")
      continue
    run = arm["chosen"] or {}
    lines.append(f"| {label} | {arm['batch']:,} | {_search(arm)} | {run.get('updates') or '—'} "
                 f"| {run.get('examples') or 0:,} | {_pct(arm['chosen'])} | {_spread(arm)} "
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
  if summary.get("closed") is None:
    return ("The study has not finished both arms: no verdict yet (rerun the study "
            "command to finish it).")
  small, full = arms["small"]["chosen"], arms["full"]["chosen"]
  gap, tolerance = summary["gap_points"], summary["tolerance_points"]
  closes = "closes" if summary["closed"] else "does not close"
  text = [f"**The full batch {closes} the gap**: {_pct(full)}% against {_pct(small)}% "
          f"for batch {arms['small']['batch']} ({gap:+.2f} points; closed means at most "
          f"{tolerance:.2f}, the larger of {summary_lib.GAP_POINTS} and the seed ranges)."]
  text.append(f"Cost: {full['updates']} updates against {small['updates']} "
              f"({summary['updates_ratio']:.3g}×) and {full['examples']:,} examples against "
              f"{small['examples']:,} ({summary['examples_ratio']:.3g}×); each full-batch "
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


def section_for(workdir: str, rows: Sequence[dict], records: Dict[str, list],
                report_dir: str) -> str:
  """The full-batch sections of a report: this study's own answer (written
  to DIR/full_batch.json first, when it has full-batch cells) and its
  siblings'; "" when there is none."""
  own = summary_lib.summarize(workdir, rows, records)
  if own is not None:
    summary_lib.write(workdir, own)
  texts = []
  for index, (label, summary) in enumerate(summaries(workdir)):
    try:
      texts.append(section(summary, label, report_dir, index))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
      texts.append(f"## Full-batch gradient descent (`{label}`)\n\nIts {layout.FULL_BATCH} "
                   f"could not be shown ({type(e).__name__}: {e}); rerun "
                   f"`python -m lbt.report` on `{label}` to rewrite it.\n")
  return "\n".join(texts)
