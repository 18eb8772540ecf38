"""The `diffae` console command: reconstruct, encode, decode, inspect and bundle, for every
installed family.

Families are found only through `diffae_core.families.installed_families()` (entry points).
"""

from .app import main

__all__ = ["main"]
