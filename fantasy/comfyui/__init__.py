"""FantasyTalking as ComfyUI nodes: load the pipeline, encode speech, sample, decode to frames and audio.

ComfyUI loads a custom node pack from `custom_nodes/<name>/__init__.py` and reads `NODE_CLASS_MAPPINGS` and
`NODE_DISPLAY_NAME_MAPPINGS`. This package is that pack: symlink or copy this folder into `custom_nodes/` (the
`fantasy` package must be installed in ComfyUI's Python), or install the package and put a one-line shim
there. docs/comfyui.md has both, step by step; `example_workflows/` holds a workflow in ComfyUI's API format.
"""

from fantasy.comfyui.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
