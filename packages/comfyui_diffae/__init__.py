"""ComfyUI entry point when this folder sits in `custom_nodes/` (the pip-installed package needs
a one-line file there instead: see src/comfyui_diffae/__init__.py).

The package lives in `src/`; it is put first on the import path so that this folder's copy is
the one ComfyUI runs. Its dependencies (the diffae model packages, see pyproject.toml) must be
installed in ComfyUI's Python. No `NODE_CLASS_MAPPINGS` here: ComfyUI would then ignore the V3
entry point.
"""

import sys
from pathlib import Path

_SOURCE = str(Path(__file__).resolve().parent / "src")
if _SOURCE not in sys.path:
    sys.path.insert(0, _SOURCE)

from comfyui_diffae import comfy_entrypoint  # noqa: E402

__all__ = ["comfy_entrypoint"]
