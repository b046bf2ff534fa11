"""The command that rebuilds a study's report from its point workdirs.

  python -m lbt.report DIR                          # DIR/results.sqlite and DIR/report/
  python -m lbt.report DIR --include=OTHER,...      # also OTHER's full-batch answer

It writes nothing outside DIR/report/ but DIR/results.sqlite; another
study's answer is shown only when named. What the report holds and how it
is written: `lbt.reports.study_report`.
"""

import sys
from typing import List, Sequence, Tuple

from lbt.errors import ConfigError
from lbt.io import cli, files
from lbt.reports.study_report import build_report, main_table

USAGE = "one study directory: python -m lbt.report DIR [--include=OTHER_DIR,...]"


def parse(args: Sequence[str]) -> Tuple[str, List[str]]:
  """(DIR, the included study directories) from the command's arguments."""
  flags = [a for a in args if a.startswith("-")]
  positional = [a for a in args if not a.startswith("-")]
  if len(positional) != 1 or any(not f.startswith("--include=") for f in flags):
    raise ConfigError("arguments", list(args), USAGE)
  include = [d for f in flags for d in f.split("=", 1)[1].split(",") if d]
  for name, directory in [("DIR", positional[0])] + [("--include", d) for d in include]:
    files.check_location(directory, name)
    if not files.path(directory).is_dir():
      raise ConfigError(name, directory, "an existing study directory")
  return positional[0], include


def main(argv: Sequence[str]) -> int:
  cli.exit_on_signals()

  def command():
    workdir, include = parse(argv[1:])
    print(f"lbt.report: {build_report(workdir, include)}\n\n{main_table(workdir)}")

  return cli.run(command)


if __name__ == "__main__":
  sys.exit(main(sys.argv))
