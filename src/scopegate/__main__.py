"""`python -m scopegate` runs the same CLI as the `scopegate` console script."""

from scopegate.cli import main

raise SystemExit(main())
