"""FantasyTalking Studio's Gradio app: the Space's entry file, and `python app.py` in the repository.

The page lives in the package (`fantasy.app.ui`; installed, `fantasy-studio` starts it); this file only builds it
at import time on a Space (ZeroGPU packs the loaded models before serving) and runs it as a script. Flags:
`python app.py --help`, or docs/app.md.
"""

from __future__ import annotations

from fantasy.app import space  # first: on ZeroGPU `spaces` must be imported before CUDA is touched

# isort: split

from fantasy.app import ui

demo = ui.space_demo() if space.on_spaces() else None

if __name__ == "__main__":
    ui.main(prebuilt=demo)
