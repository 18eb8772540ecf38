"""`python -m diffae ...` runs the `diffae` command (also under `torchrun -m diffae`)."""

from diffae.cli import main

raise SystemExit(main())
