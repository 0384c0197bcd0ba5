"""``python -m finrec ...``: the same command line as ``finrec`` (where the console script is not
on PATH, e.g. a notebook's kernel or a locked-down server)."""

from finrec.cli import main

raise SystemExit(main())
