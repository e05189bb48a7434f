"""`python -m llava_local` runs the CLI."""

from .cli import main

raise SystemExit(main())
