"""`python -m sgbench` (what ./bench/run execs): the command line lives in cli.py."""

from .cli import main

raise SystemExit(main())
