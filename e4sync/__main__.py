"""`python -m e4sync`: the same program as the `e4sync` console script."""

from e4sync.cli import main

raise SystemExit(main())
