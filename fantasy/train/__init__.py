"""Training data for the paper's dual-stage training: talking clips -> fixed-size samples -> cached features.

`clips` finds and loads clips, `labels` derives motion-intensity labels and the lip-tracing mask from
them, `cache` encodes each clip once with the frozen pipeline, and `dataset` serves the cached clips
to a trainer without loading any encoder.
"""
