"""The `diffae` console command: reconstruct, encode, decode and inspect with any installed family.

Families are found only through `diffae_core.families.installed_families()` (entry points).
Image files need Pillow, the optional extra `diffae-core[images]`.
"""

from .app import main

__all__ = ["main"]
