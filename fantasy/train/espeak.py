"""Speech with phoneme timings from espeak-ng's library (through ctypes): the ground truth of synthetic clips.

`espeak-ng --pho` prints nothing for the default (non-MBROLA) voices and `-x` has no times, so this calls
`libespeak-ng.so.1` (Debian `libespeak-ng1`, installed with `espeak-ng`) in synchronous mode with phoneme
events: one synthesis gives the samples and the start of every phoneme in ms.

The library keeps state from one synthesis to the next (a pause after a comma, a few samples at the end
differ between the first and later calls), so every synthesis runs in a freshly forked child process
that loads the library anew: the same text and voice then always give the same samples and timings.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from fantasy.errors import FantasyError, InvalidSetting

SAMPLE_RATE = 16_000
LIBRARY_NAMES = ("espeak-ng", "libespeak-ng.so.1")

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_DONT_EXIT = 0x8000
_EVENT_LIST_TERMINATED, _EVENT_PHONEME = 0, 7
_RATE, _PITCH = 1, 3
_POS_CHARACTER, _CHARS_UTF8 = 1, 1


class EspeakUnavailable(FantasyError):
    """espeak-ng's library is not installed."""


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
        ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p), ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class Phoneme:
    """One phoneme: espeak's mnemonic (e.g. 'p', 'aI', '_:' for a pause) and where it starts."""

    name: str
    start: float  # seconds from the start of the speech


@dataclass(frozen=True)
class Utterance:
    """Synthesised speech (16 kHz mono float32) and its phonemes in order."""

    samples: np.ndarray
    phonemes: tuple[Phoneme, ...]

    @property
    def seconds(self) -> float:
        return self.samples.size / SAMPLE_RATE


class _Espeak:
    def __init__(self) -> None:
        path = next((p for p in (ctypes.util.find_library(LIBRARY_NAMES[0]), LIBRARY_NAMES[1]) if p), None)
        try:
            self.lib = ctypes.CDLL(path)
        except OSError:
            raise EspeakUnavailable(
                "espeak-ng's library (libespeak-ng.so.1) is not installed; install it with "
                "`apt-get install espeak-ng` to make synthetic training clips."
            ) from None
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.rate = self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_DONT_EXIT
        )
        if self.rate <= 0:
            raise EspeakUnavailable(f"espeak-ng's library did not start (returned {self.rate}); check its data files.")
        self.chunks: list[np.ndarray] = []
        self.events: list[tuple[str, int]] = []
        self.callback = _CALLBACK(self._collect)  # kept alive as long as the library may call it
        self.lib.espeak_SetSynthCallback(self.callback)
        self.lock = threading.Lock()

    def _collect(self, wav, count, events) -> int:
        if wav and count > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).astype(np.float32) / 32768.0)
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            if events[i].type == _EVENT_PHONEME:
                self.events.append((events[i].id.string.decode("utf-8", "replace"), events[i].audio_position))
            i += 1
        return 0

    def synthesise(self, text: str, voice: str, words_per_minute: int, pitch: int) -> Utterance:
        import soxr

        with self.lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise InvalidSetting(f"espeak-ng has no voice '{voice}' (try en-us, en, en+f2, en-gb-scotland)")
            self.lib.espeak_SetParameter(_RATE, int(words_per_minute), 0)
            self.lib.espeak_SetParameter(_PITCH, int(pitch), 0)
            self.chunks, self.events = [], []
            data = text.encode("utf-8") + b"\0"
            status = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            self.lib.espeak_Synchronize()
            if status != 0:
                raise FantasyError(f"espeak-ng could not synthesise {text[:40]!r} (error {status})")
            chunks, events = self.chunks, self.events
            self.chunks, self.events = [], []
        samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        samples = soxr.resample(samples, self.rate, SAMPLE_RATE).astype(np.float32)
        phonemes = tuple(Phoneme(name, ms / 1000.0) for name, ms in events if name)
        return Utterance(samples, phonemes)


def _synthesise_fresh(text: str, voice: str, words_per_minute: int, pitch: int) -> Utterance:
    return _Espeak().synthesise(text, voice, words_per_minute, pitch)


def synthesise(text: str, voice: str = "en-us", words_per_minute: int = 160, pitch: int = 50) -> Utterance:
    """Speak `text` with espeak-ng; the same arguments always give the same samples and timings."""
    if not text.strip():
        raise InvalidSetting("the text to speak is empty")
    context = multiprocessing.get_context("fork")  # a child that has never loaded the library
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(_synthesise_fresh, text, voice, words_per_minute, pitch).result()
