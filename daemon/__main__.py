"""`python -m candled`: the same command line as the `candled` script."""

from candled.cli import main

raise SystemExit(main())
