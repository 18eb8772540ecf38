"""comfyui_diffae: ComfyUI nodes for the diffae autoencoders (a V3 node pack).

ComfyUI loads `comfy_entrypoint`. Nothing here imports `comfy` until ComfyUI calls it: the
package imports without ComfyUI, and the model packages never import `comfy` at all.

Installed with pip into ComfyUI's Python, ComfyUI still only loads what is in `custom_nodes/`:
add a file `custom_nodes/diffae_nodes.py` holding `from comfyui_diffae import comfy_entrypoint`.
As a folder in `custom_nodes/` (this package's source folder), its top-level `__init__.py` does
the same.
"""

from __future__ import annotations

from typing import Any

__all__ = ["comfy_entrypoint"]


async def comfy_entrypoint() -> Any:
    """The `ComfyExtension` listing the nodes (ComfyUI's V3 entry point)."""
    from .nodes import DiffaeExtension

    return DiffaeExtension()
