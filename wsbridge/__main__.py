"""Allow ``python -m wsbridge``."""

from .cli import main

raise SystemExit(main())
