"""Transformers' CLIP image processor name, resolved once and quietly: import this before diffusers' Wan pipeline.

diffusers' Wan pipeline looks the name up at import, and transformers 5 without torchvision answers the first
lookup with a fallback notice; importing this module does that lookup first, with the notice off.
"""

from __future__ import annotations


def clip_image_processor_class() -> type:
    """CLIP's image processor class, looked up without transformers' fallback notice.

    transformers 5 without torchvision answers the first lookup of `CLIPImageProcessor` (diffusers'
    Wan pipeline does one at import) with a warning that it falls back to `CLIPImageProcessorPil`,
    then binds the name to that class. We do that lookup once with its logger at ERROR: the same
    class, no notice. Only the processor's mean and std are used (the portrait is squashed to 224 px
    as the release does, `fantasy.media.image.clip_pixel_values`).
    """
    import logging

    import transformers
    from transformers.utils import import_utils

    logger = logging.getLogger(import_utils.__name__)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return transformers.CLIPImageProcessor
    finally:
        logger.setLevel(level)


clip_image_processor_class()
