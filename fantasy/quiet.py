"""Drop the known import-time messages of third-party packages, so a user's first screen is ours.

diffusers imports torchao whenever it is installed (its quantizer registry), and torchao, torch and
transformers then log warnings that concern paths we never use on that machine: torchao's CUDA/other-ABI
kernels, pytree's Enum deprecation, diffusers' "Unable to import `torchao` Tensor objects" and
transformers' torchvision fallback for the CLIP image processor (our CLIP input is made by
`fantasy.media.image.clip_pixel_values`, not by that processor). Each filter matches one exact message on the
logger that emits it; anything else from those loggers still gets through. Importing this module installs
the filters (so an entry point can do it in its import block, before the noisy imports).
"""

from __future__ import annotations

import logging
import re

# (logger name, pattern matched against the formatted message)
KNOWN_NOISE: tuple[tuple[str, str], ...] = (
    ("torchao", r"^Failed to load .*/torchao/_C[^/]*\.so: Could not load this library"),
    ("torch.utils._pytree", r"is an Enum subclass and is now natively supported by torch\.compile"),
    ("diffusers.quantizers.torchao.torchao_quantizer", r"^Unable to import `torchao` Tensor objects"),
    ("transformers.utils.import_utils",
     r"^`CLIPImageProcessor` requires torchvision \(not installed\); falling back to `CLIPImageProcessorPil`"),
)


class _DropKnown(logging.Filter):
    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def drop_known(messages: tuple[tuple[str, str], ...]) -> None:
    """Drop each (logger name, pattern) message on its logger (idempotent); other messages still get through."""
    for name, pattern in messages:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnown) and f.pattern.pattern == pattern for f in logger.filters):
            logger.addFilter(_DropKnown(pattern))


def silence_known_import_noise() -> None:
    """Install the filters (idempotent). Call before the first diffusers/transformers import."""
    drop_known(KNOWN_NOISE)


silence_known_import_noise()
