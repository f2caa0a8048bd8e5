"""What `FantasyTalkingPipeline.__call__` accepts, made into what it computes with: the portrait at its final size,
the speech as 16 kHz mono samples, and the video's frame count.

The portrait is sized as the release sizes it (LANCZOS to the longest edge, sides rounded up to multiples of 16,
`fantasy.media.image.resize_portrait`), or to an explicit height x width (rounded up to multiples of 16 the same
way). The speech goes through the same decoding, mixing, resampling and checks as a file does
(`fantasy.media.audio`), so an array and the file it came from give the same samples.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fantasy.errors import InvalidSetting
from fantasy.media.audio import (
    SAMPLE_RATE,
    Speech,
    check_speech,
    frame_count,
    load_speech,
    resample_like_librosa,
)
from fantasy.media.image import (
    SIDE_MULTIPLE,
    check_dimensions,
    load_portrait,
    resize_portrait,
    to_rgb,
)
from fantasy.model.long_video import MOTION_FRAMES, total_frame_count

MAX_CHANNELS = 8  # an array with a side this short is (channels, samples) or (samples, channels)


def portrait_from(image, height: int | None, width: int | None, longest_edge: int) -> Image.Image:
    """The RGB portrait at the size the video will have (both sides multiples of 16).

    `image`: a path, a PIL image, or an array / tensor ([H, W, C] or [C, H, W]; uint8, or float in [0, 1]).
    `height` and `width` together give the size (rounded up to multiples of 16); otherwise `longest_edge` does.
    """
    if isinstance(image, (np.ndarray, torch.Tensor)):
        image = _array_to_image(image)
    if isinstance(image, Image.Image):  # in memory: the pixel and aspect limits, any mode -> RGB (any size is sized)
        check_dimensions(image.size)
        portrait = to_rgb(image)
    else:  # a file: read as an upload is (`load_portrait`: limits, orientation, at least 64 px a side)
        portrait = load_portrait(image)
    if height is None and width is None:
        return resize_portrait(portrait, longest_edge)
    if height is None or width is None:
        raise InvalidSetting("give both height and width, or neither (then longest_edge sets the size)")
    size = (_side(width, "width"), _side(height, "height"))
    return portrait if portrait.size == size else portrait.resize(size, Image.Resampling.LANCZOS)


def _side(value: int, name: str) -> int:
    if value < 1:
        raise InvalidSetting(f"{name} must be a positive number of pixels, got {value}")
    return math.ceil(value / SIDE_MULTIPLE) * SIDE_MULTIPLE


def _array_to_image(array: np.ndarray | torch.Tensor) -> Image.Image:
    values = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    if values.ndim == 4 and values.shape[0] == 1:
        values = values[0]
    if values.ndim == 3 and values.shape[0] in (1, 3, 4) and values.shape[-1] not in (1, 3, 4):
        values = values.transpose(1, 2, 0)  # [C, H, W] -> [H, W, C]
    if values.ndim == 3 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.ndim not in (2, 3) or (values.ndim == 3 and values.shape[-1] not in (3, 4)):
        raise InvalidSetting(f"an image array must be [H, W, 3] or [3, H, W] (or grey / RGBA), got {values.shape}")
    if values.dtype != np.uint8:
        values = values.astype(np.float64)
        if values.min() < 0 or values.max() > 1:
            raise InvalidSetting("a float image array must hold values in [0, 1] (or pass uint8)")
        values = np.round(values * 255).astype(np.uint8)
    return Image.fromarray(values)


def speech_from(audio, sampling_rate: int | None, max_seconds: float | None = None) -> Speech:
    """Mono 16 kHz samples and the whole track's duration.

    `audio`: a file (any format `fantasy.media.audio.load_speech` reads; decoding stops after `max_seconds`
    plus a margin) or samples with their `sampling_rate`: [n], [channels, n] or [n, channels], float (or int16 /
    int32 PCM, scaled as a WAV reader scales them).
    """
    if isinstance(audio, (str, Path)):
        return load_speech(audio, max_seconds)
    if sampling_rate is None:
        raise InvalidSetting("speech given as samples needs its sampling_rate (e.g. sampling_rate=16000)")
    values = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    if np.issubdtype(values.dtype, np.integer):
        values = values.astype(np.float32) / float(2 ** (8 * values.dtype.itemsize - 1))
    values = values.astype(np.float32, copy=False)
    if values.ndim == 2:
        channels_first = values.shape[0] <= MAX_CHANNELS < values.shape[1]
        if not channels_first and values.shape[1] > MAX_CHANNELS:
            raise InvalidSetting(f"speech samples must be [n], [channels, n] or [n, channels], got {values.shape}")
        values = values.mean(axis=0 if channels_first else 1, dtype=np.float32)
    elif values.ndim != 1:
        raise InvalidSetting(f"speech samples must be [n], [channels, n] or [n, channels], got {values.shape}")
    if values.size == 0:
        raise InvalidSetting("the speech holds no samples")
    mono = resample_like_librosa(values, int(sampling_rate), SAMPLE_RATE)
    check_speech(mono, SAMPLE_RATE)
    return Speech(mono, len(mono) / SAMPLE_RATE)


def frames_for(duration_s: float, fps: float, num_frames: int | None, window_frames: int, release: bool) -> int:
    """The video's frame count: `num_frames` if given (4k+1), else the speech's (the release's rule: one clip of
    at most `window_frames` in release mode, the whole speech otherwise)."""
    if window_frames <= MOTION_FRAMES or (window_frames - 1) % 4:
        raise InvalidSetting(f"window_frames must be 4k+1 and more than {MOTION_FRAMES} (e.g. 81), got {window_frames}")
    if num_frames is None:
        if release:
            return frame_count(duration_s, fps, window_frames)
        return total_frame_count(duration_s, fps, math.inf)[0]
    if num_frames < 5 or (num_frames - 1) % 4:
        raise InvalidSetting(f"num_frames must be 4k+1 and at least 5 (e.g. 81), got {num_frames}")
    if release and num_frames > window_frames:
        raise InvalidSetting(f"release=True makes the release's one clip of at most {window_frames} frames, "
                             f"got num_frames={num_frames}")
    return num_frames
