"""The app's logic: the sliders' mapping, input checks, jobs, streaming, the Space and Ray Serve, all without UI
code, plus the page itself in `ui` (the only module here that imports Gradio; `app.py` and `fantasy-studio` run it).
The CLI and the page build on this and the public API (`fantasy`).
"""
