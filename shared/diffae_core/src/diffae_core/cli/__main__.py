"""`python -m diffae_core.cli ...` runs the `diffae` command."""

from . import main

raise SystemExit(main())
