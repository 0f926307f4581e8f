"""``python -m factsync``: the same as the ``factsync`` command."""

from factsync.cli import main

raise SystemExit(main())
