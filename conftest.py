"""Suite-wide settings. bf16 tests exercise true bf16 on every CPU: without this, a CPU without
native bf16 kernels would upcast bf16 models to float32 (see `diffae_core.precision`), whose own
tests unset the variable."""

import os

os.environ.setdefault("DIFFAE_CPU_BF16", "1")
