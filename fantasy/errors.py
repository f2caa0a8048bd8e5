"""User-facing errors: every bad input ends in one of these, with a message a person can act on.

The CLI prints the message and exits with status 2; the app turns it into a `gr.Error`.
Anything that is not a `FantasyError` is a bug and keeps its traceback.
"""


class FantasyError(Exception):
    """Base class for errors caused by the user's input, files or environment (not by a bug).

    `concerns`: which input the error is about ("image" or "audio"), so a UI can show it there; None when
    it is about no single input.
    """

    concerns: str | None = None


class InputFileNotFound(FantasyError):
    """A path the user gave does not exist."""


class UnsupportedAudio(FantasyError):
    """The file could not be decoded as audio (or has no audio track)."""

    concerns = "audio"


class SilentAudio(FantasyError):
    """The speech track carries no signal, so there is nothing to lip-sync to."""

    concerns = "audio"


class AudioTooShort(FantasyError):
    """The speech track is shorter than the minimum we can animate."""

    concerns = "audio"


class UnsupportedImage(FantasyError):
    """The portrait file is not an image we can read."""

    concerns = "image"


class UnsupportedVideo(FantasyError):
    """A video file (to evaluate) could not be decoded, or holds no frames."""


class ImageTooSmall(FantasyError):
    """The portrait is below the minimum side length."""

    concerns = "image"


class NoFaceFound(FantasyError):
    """The portrait shows no detectable face."""

    concerns = "image"


class WeightsMissing(FantasyError):
    """A weight file the chosen preset needs is not on disk (message names it and how to get it)."""


class CheckpointMismatch(FantasyError):
    """A checkpoint does not have exactly the tensors we expect (message lists missing/unexpected keys)."""


class InvalidSetting(FantasyError):
    """A generation setting is out of its allowed range."""


class MissingInput(FantasyError):
    """A required input (portrait or speech) was not given."""


class FileTooLarge(FantasyError):
    """An uploaded file is over the size limit (message gives its size and the limit)."""


class GenerationCancelled(FantasyError):
    """The user stopped the generation; no output file is left behind."""


class TrainingDataError(FantasyError):
    """A training-data folder, one of its clips or its feature cache cannot be used (message says which and why)."""


class ClipTooShort(TrainingDataError):
    """A training clip lasts less than one training sample (F frames at the training frame rate)."""


class ImageTooLarge(FantasyError):
    """The portrait has more pixels than we decode (checked from its header, before decoding)."""

    concerns = "image"


class ImageShapeUnsupported(FantasyError):
    """The portrait is too elongated (aspect ratio over the limit) to make a video of."""

    concerns = "image"


class OutputError(FantasyError):
    """The video cannot be written where asked (a directory, read-only, disk full), or did not verify."""
