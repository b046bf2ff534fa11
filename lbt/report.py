"""The command that rebuilds a study's report from its point workdirs.

  python -m lbt.report DIR        # rebuild DIR/results.sqlite and DIR/report/

What the report holds and how it is written: `lbt.reports.study_report`.
"""

import sys
from typing import Sequence

from lbt.errors import ConfigError
from lbt.io import cli, files
from lbt.reports.study_report import build_report, main_table


def main(argv: Sequence[str]) -> int:
  cli.exit_on_signals()

  def command():
    if len(argv) != 2 or argv[1].startswith("-"):
      raise ConfigError("arguments", argv[1:], "one study directory: python -m lbt.report DIR")
    files.check_location(argv[1], "DIR")
    if not files.path(argv[1]).is_dir():
      raise ConfigError("DIR", argv[1], "an existing study directory")
    print(f"lbt.report: {build_report(argv[1])}\n\n{main_table(argv[1])}")

  return cli.run(command)


if __name__ == "__main__":
  sys.exit(main(sys.argv))
