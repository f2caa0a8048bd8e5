"""The app's logic without any UI: the sliders' mapping, input checks, jobs, streaming, the Space and
Ray Serve. `app.py` and the CLI build on this and the public API (`fantasy`).
"""
