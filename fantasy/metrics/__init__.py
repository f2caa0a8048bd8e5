"""Offline quality metrics for generated clips: lip-sync proxy, identity similarity, motion, flicker.

Modules, one idea each: `frames` (decode), `sync` (speech envelope, mouth track, lagged
correlation), `identity` (dlib's face embedding, or any `FaceEmbedder`), `dynamics` (optical flow
inside/outside the subject, flicker), `landmarks` (per-frame face tracking), `report` (run all,
table, JSON), `plot` (PNG), `command` (`python -m fantasy eval`).
"""
