"""``python -m lamina`` = the ``lamina`` command."""

from .cli import main

raise SystemExit(main())
