"""How a run or a trial ended: the one vocabulary, read from its workdir by
`lbt.studies.results` and scored by the searches (`lbt.studies.search_rules`:
a finished trial has a score, a diverged one says where the optimum is not).
Kept apart so that the pure search rules need none of the study machinery."""

FINISHED, DIVERGED, FAILED, RUNNING, PENDING = (
    "finished", "diverged", "failed", "running", "pending")
