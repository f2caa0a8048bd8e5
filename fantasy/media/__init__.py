"""Media in and out: speech decoding and resampling, portraits, mp4 writing and muxing, and where a
finished video goes. Imports no model code.
"""
