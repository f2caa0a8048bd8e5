"""The nodes. Each is a class with ComfyUI's custom-node contract: `INPUT_TYPES()` (the inputs, with their
types, defaults and ranges), `RETURN_TYPES`/`RETURN_NAMES`, `FUNCTION` (the method ComfyUI calls with the
inputs as keyword arguments) and `CATEGORY` (where the node sits in ComfyUI's menu).

    FantasyTalking Loader  -> FANTASY_PIPE    the pipeline (tiny demo or the real 14B model), LoRAs
    FantasyTalking Speech  -> FANTASY_SPEECH  a speech file or an AUDIO, decoded and checked, with the video's fps
    FantasyTalking Sampler -> FANTASY_VIDEO   portrait IMAGE + speech + prompt, both guidances, the motion sliders
    FantasyTalking Decode  -> IMAGE, AUDIO, FLOAT   the frames, the speech they follow, the fps: for CreateVideo

The sampler runs `fantasy.generation.generate`, the same path as the command line (long speech in consecutive
windows, each continuing from the last frames of the one before, decoded as it goes), so its output is the
decoded frames; Decode hands them to ComfyUI's types. Our one-line errors reach ComfyUI's error panel as they are.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

CATEGORY = "FantasyTalking"
PIPE, SPEECH, VIDEO = "FANTASY_PIPE", "FANTASY_SPEECH", "FANTASY_VIDEO"
AUTO = "auto"
_PIPES: dict[tuple, dict] = {}  # one load per set of options for the process's lifetime (ComfyUI keeps running)


def _comfy_models_folder() -> str:
    """ComfyUI's own models folder when running inside ComfyUI ('' elsewhere): its Wan files are used."""
    try:
        import folder_paths  # ComfyUI's module

        return str(folder_paths.models_dir)
    except ImportError:
        return ""


def _progress(total: int):
    """ComfyUI's progress bar and interrupt check, or nothing outside ComfyUI."""
    try:
        import comfy.model_management
        import comfy.utils
    except ImportError:
        return lambda done: None
    bar = comfy.utils.ProgressBar(total)

    def update(done: float) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(round(done), total)

    return update


class FantasyTalkingLoader:
    """Load the pipeline once: the `tiny` demo models (any machine) or the real 14B model (a CUDA GPU)."""

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802 (ComfyUI's name)
        from fantasy.weights.offload import VRAM_MODES
        from fantasy.weights.quantize import DIT_MODES

        return {
            "required": {
                "preset": (["tiny", "real"], {"default": "tiny", "tooltip": "tiny: random demo models, output is noise"}),
            },
            "optional": {
                "dit": ([AUTO, *DIT_MODES], {"default": AUTO, "tooltip": "real: how the 14B DiT is held"}),
                "vram": (list(VRAM_MODES), {"default": "resident"}),
                "comfy_models": ("STRING", {"default": "", "tooltip": "real: a ComfyUI models folder whose Wan files "
                                            "are used (empty: this ComfyUI's own)"}),
                "weights": ("STRING", {"default": "", "tooltip": "real: our weights folder (wav2vec2, adapter)"}),
                "adapter": ("STRING", {"default": "", "tooltip": "another adapter or training checkpoint"}),
                "loras": ("STRING", {"default": "", "tooltip": "LoRA files, FILE[:STRENGTH], comma-separated"}),
            },
        }

    RETURN_TYPES = (PIPE,)
    RETURN_NAMES = ("pipeline",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, preset, dit=AUTO, vram="resident", comfy_models="", weights="", adapter="", loras=""):
        from fantasy.weights.loras import load_loras, loras_from_env
        from fantasy.weights.presets import get_preset, load_pipeline

        key = (preset, dit, vram, comfy_models, weights, adapter, loras)
        if key not in _PIPES:
            specs = loras_from_env(loras, source="loras") if loras.strip() else []
            options = {}
            if preset == "real":
                options = {"dit": None if dit == AUTO else dit, "vram": vram, "weights": weights or None,
                           "comfy_models": comfy_models or _comfy_models_folder() or None}
            pipe = load_pipeline(preset, adapter=adapter or None, **options)
            pipe.set_progress_bar_config(disable=True)
            load_loras(pipe, specs)
            _PIPES.clear()  # one model in memory at a time
            _PIPES[key] = {"pipe": pipe, "preset": get_preset(preset)}
        return (_PIPES[key],)


@dataclass(frozen=True)
class Speech:
    """A checked speech file and the video timing that goes with it."""

    path: Path
    fps: int
    max_duration: float
    seconds: float  # the whole track


class FantasyTalkingSpeech:
    """The speech to lip-sync: a file path, or an AUDIO from another node (which wins when connected)."""

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {
            "required": {
                "speech_file": ("STRING", {"default": "", "tooltip": "wav/mp3/flac/ogg/m4a, or a video's audio"}),
                "fps": ("INT", {"default": 23, "min": 8, "max": 60}),
                "max_duration": ("FLOAT", {"default": 10.0, "min": 0.2, "max": 600.0, "step": 0.1,
                                           "tooltip": "seconds of speech to animate; longer speech is cut"}),
            },
            "optional": {"audio": ("AUDIO",)},
        }

    RETURN_TYPES = (SPEECH,)
    RETURN_NAMES = ("speech",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, speech_file, fps, max_duration, audio=None):
        from fantasy.errors import MissingInput
        from fantasy.media.audio import load_speech

        if audio is not None:
            path = _audio_file(audio)
        elif speech_file.strip():
            path = _input_file(speech_file.strip())
        else:
            raise MissingInput("give the speech: a file path in speech_file, or connect an AUDIO")
        speech = load_speech(path, max_duration)  # decoded and checked now: a bad file fails at this node
        return (Speech(path, int(fps), float(max_duration), speech.duration_s),)


def _input_file(name: str) -> Path:
    """A relative path is looked up in ComfyUI's input folder first (where its Load nodes put uploads)."""
    path = Path(name).expanduser()
    if not path.is_absolute():
        try:
            import folder_paths

            inside = Path(folder_paths.get_input_directory()) / path
            if inside.is_file():
                return inside
        except ImportError:
            pass
    return path


def _audio_file(audio: dict) -> Path:
    """An AUDIO written as a float WAV (in ComfyUI's temp folder when there is one) for the speech decoder."""
    import soundfile

    from fantasy.comfyui.convert import audio_samples

    samples, rate = audio_samples(audio)
    try:
        import folder_paths

        folder = Path(folder_paths.get_temp_directory())
    except ImportError:
        folder = Path(tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="fantasy-speech-", suffix=".wav", dir=folder)
    os.close(fd)
    soundfile.write(name, samples, rate, subtype="FLOAT")
    return Path(name)


class FantasyTalkingSampler:
    """Portrait + speech + prompt -> the talking video's frames, with both guidances and the motion sliders."""

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        from fantasy.model.prompts import DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT
        from fantasy.settings import DEFAULT_SEED

        return {
            "required": {
                "pipeline": (PIPE,),
                "speech": (SPEECH,),
                "portrait": ("IMAGE",),
                "prompt": ("STRING", {"default": DEFAULT_PROMPT, "multiline": True}),
                "negative_prompt": ("STRING", {"default": DEFAULT_NEGATIVE_PROMPT, "multiline": True}),
                "seed": ("INT", {"default": DEFAULT_SEED, "min": 0, "max": 2**63 - 1}),
                "steps": ("INT", {"default": 30, "min": 1, "max": 100}),
                "text_guidance": ("FLOAT", {"default": 5.0, "min": 1.0, "max": 20.0, "step": 0.1}),
                "audio_guidance": ("FLOAT", {"default": 5.0, "min": 1.0, "max": 20.0, "step": 0.1}),
                "audio_weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.05}),
                "expression": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                                         "tooltip": "expression intensity (the app's slider)"}),
                "body": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                                   "tooltip": "body-motion intensity (the app's slider)"}),
                "size": ("INT", {"default": 0, "min": 0, "max": 1280, "step": 16,
                                 "tooltip": "longest edge in px (0: the preset's default, 512 real, 128 tiny)"}),
                "max_frames": ("INT", {"default": 81, "min": 21, "max": 161, "step": 4,
                                       "tooltip": "frames per window (the release's clip: 81)"}),
            },
        }

    RETURN_TYPES = (VIDEO,)
    RETURN_NAMES = ("video",)
    FUNCTION = "sample"
    CATEGORY = CATEGORY

    def sample(self, pipeline, speech, portrait, prompt, negative_prompt, seed, steps, text_guidance, audio_guidance,
               audio_weight, expression, body, size, max_frames):
        import numpy as np

        from fantasy.app.sliders import motion_controls
        from fantasy.comfyui.convert import image_to_pil
        from fantasy.generation import generate, prepare_inputs
        from fantasy.settings import Settings

        pipe, preset = pipeline["pipe"], pipeline["preset"]
        settings = Settings(prompt=prompt or None, negative_prompt=negative_prompt, seed=int(seed), steps=int(steps),
                            text_guidance=float(text_guidance), audio_guidance=float(audio_guidance),
                            audio_weight=float(audio_weight), fps=speech.fps, max_frames=int(max_frames),
                            max_duration=speech.max_duration, longest_edge=int(size) or None).resolved(preset)
        settings, _ = motion_controls(float(expression), float(body), settings, trained=pipe.motion_context is not None)
        image = image_to_pil(portrait)
        inputs = prepare_inputs(image, speech.path, settings)
        frames: list[np.ndarray] = []
        update = _progress(settings.steps * 100)

        def progress(event) -> None:  # a `fantasy.progress.Progress`
            if event.stage == "denoise":
                update(event.fraction * settings.steps * 100)

        result = generate(pipe, image, speech.path, None, settings, preset, progress=progress, on_frames=frames.append,
                          inputs=inputs)
        video = np.concatenate(frames)
        samples = inputs.speech[: round(len(video) / settings.fps * 16_000)]
        return ({"frames": video, "fps": float(settings.fps), "speech": samples, "sample_rate": 16_000,
                 "motion_mode": result.motion_mode, "speech_cut": result.speech_cut},)


class FantasyTalkingDecode:
    """The video as ComfyUI's types: IMAGE frames, the speech they follow (AUDIO, as long as the video) and the fps
    (for Create Video -> Save Video)."""

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {"video": (VIDEO,)}}

    RETURN_TYPES = ("IMAGE", "AUDIO", "FLOAT")
    RETURN_NAMES = ("images", "audio", "fps")
    FUNCTION = "decode"
    CATEGORY = CATEGORY

    def decode(self, video):
        from fantasy.comfyui.convert import frames_to_image, samples_to_audio

        return (frames_to_image(video["frames"]), samples_to_audio(video["speech"], video["sample_rate"]), video["fps"])


NODE_CLASS_MAPPINGS = {
    "FantasyTalkingLoader": FantasyTalkingLoader,
    "FantasyTalkingSpeech": FantasyTalkingSpeech,
    "FantasyTalkingSampler": FantasyTalkingSampler,
    "FantasyTalkingDecode": FantasyTalkingDecode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FantasyTalkingLoader": "FantasyTalking Loader",
    "FantasyTalkingSpeech": "FantasyTalking Speech",
    "FantasyTalkingSampler": "FantasyTalking Sampler",
    "FantasyTalkingDecode": "FantasyTalking Decode",
}
