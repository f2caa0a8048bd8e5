"""FantasyTalking Studio: one portrait + one speech clip -> a talking-portrait video.

The package is usable without Gradio; `app.py` is a thin UI over `fantasy.generation`.
"""

__version__ = "0.1.0"
