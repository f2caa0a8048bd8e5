"""Which weights, and how they load: presets, the tiny random models, the real preset's files (download,
conversion, quantization, offloading, key maps) and the adapter / trained-module files.
"""
