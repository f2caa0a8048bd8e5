"""The ComfyUI node pack, loaded and run the way ComfyUI does, on the tiny preset (CI has no ComfyUI).

ComfyUI imports `custom_nodes/<name>/__init__.py` from its file path (its folder as the package), reads
`NODE_CLASS_MAPPINGS`, builds each node's widgets from `INPUT_TYPES()`, validates a queued prompt's values
against them (combo choices, min/max), and runs the graph: each node's `FUNCTION` called with its inputs as
keyword arguments, linked inputs being an earlier node's outputs by index (`["node id", output index]`). The
executor below does exactly that for the example workflow (`fantasy/comfyui/example_workflows/`); ComfyUI's
own LoadImage / CreateVideo / SaveVideo are stood in for by their documented behaviour.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from fantasy.errors import MissingInput

from .conftest import EXAMPLE_IMAGE, EXAMPLE_SPEECH, ROOT
from .mp4_probe import probe

PACK = ROOT / "fantasy" / "comfyui"
WORKFLOW = PACK / "example_workflows" / "fantasy_talking_api.json"
TYPES = {"INT": int, "FLOAT": (int, float), "STRING": str, "BOOLEAN": bool}


def load_pack(name: str = "fantasy_talking"):
    """As ComfyUI's `load_custom_node` does for a folder in custom_nodes/."""
    spec = importlib.util.spec_from_file_location(name, PACK / "__init__.py", submodule_search_locations=[str(PACK)])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_pack_keeps_comfyuis_custom_node_contract():
    pack = load_pack()
    assert set(pack.NODE_CLASS_MAPPINGS) == set(pack.NODE_DISPLAY_NAME_MAPPINGS) == {
        "FantasyTalkingLoader", "FantasyTalkingSpeech", "FantasyTalkingSampler", "FantasyTalkingDecode"}
    for name, node in pack.NODE_CLASS_MAPPINGS.items():
        spec = node.INPUT_TYPES()
        assert set(spec) <= {"required", "optional", "hidden"} and spec["required"], name
        for inputs in spec.values():
            for input_name, declared in inputs.items():
                assert isinstance(declared, tuple) and 1 <= len(declared) <= 2, (name, input_name)
                assert isinstance(declared[0], (str, list)), (name, input_name)
                options = declared[1] if len(declared) == 2 else {}
                if isinstance(declared[0], list):  # a combo: its default is one of its choices
                    assert options.get("default", declared[0][0]) in declared[0], (name, input_name)
                elif declared[0] in TYPES and "default" in options:
                    assert isinstance(options["default"], TYPES[declared[0]]), (name, input_name)
                    if declared[0] in ("INT", "FLOAT"):
                        assert options.get("min", -np.inf) <= options["default"] <= options.get("max", np.inf)
        assert isinstance(node.RETURN_TYPES, tuple) and all(isinstance(t, str) for t in node.RETURN_TYPES)
        assert len(node.RETURN_NAMES) == len(node.RETURN_TYPES)
        assert callable(getattr(node(), node.FUNCTION)) and node.CATEGORY == "FantasyTalking"
    assert pack.NODE_CLASS_MAPPINGS["FantasyTalkingDecode"].RETURN_TYPES == ("IMAGE", "AUDIO", "FLOAT")


def stand_ins(outputs: dict):
    """ComfyUI's own nodes in the example: LoadImage gives IMAGE [1, H, W, 3] float in 0..1; CreateVideo +
    SaveVideo write the frames at fps with the AUDIO muxed (here: our mp4 writer)."""

    def load_image(image):
        pixels = np.asarray(Image.open(image).convert("RGB"), dtype=np.float32) / 255.0
        return (torch.from_numpy(pixels)[None],)

    def create_video(images, fps, audio=None):
        return ({"images": images, "fps": fps, "audio": audio},)

    def save_video(video, filename_prefix, format, codec):  # noqa: A002 (ComfyUI's input name)
        from fantasy.media.video import Mp4Writer

        folder = outputs["folder"]
        wav = folder / "audio.wav"
        waveform = video["audio"]["waveform"]
        soundfile.write(wav, waveform[0].T.numpy(), video["audio"]["sample_rate"])
        target = folder / f"{filename_prefix.replace('/', '_')}.mp4"
        frames = (video["images"].numpy() * 255).round().astype(np.uint8)
        with Mp4Writer(target, video["fps"], frames.shape[2], frames.shape[1], audio_path=wav) as writer:
            writer.write(frames)
        outputs["video"] = target
        return ()

    return {"LoadImage": load_image, "CreateVideo": create_video, "SaveVideo": save_video}


def check_value(node_class, name: str, value) -> None:
    """ComfyUI's prompt validation for a widget value: a combo's choice, a number within min/max."""
    spec = node_class.INPUT_TYPES()
    declared = {**spec.get("required", {}), **spec.get("optional", {})}[name]
    options = declared[1] if len(declared) == 2 else {}
    if isinstance(declared[0], list):
        assert value in declared[0], f"{name}: {value!r} is not one of {declared[0]}"
    elif declared[0] in ("INT", "FLOAT"):
        assert options.get("min", -np.inf) <= value <= options.get("max", np.inf), f"{name}: {value} out of range"


def run_workflow(prompt: dict, nodes: dict, outputs: dict, extra: dict | None = None) -> dict:
    """Execute an API-format prompt in dependency order, as ComfyUI's executor does (`extra`: more stand-ins)."""
    done: dict[str, tuple] = {}
    other = {**stand_ins(outputs), **(extra or {})}

    def run(node_id: str) -> tuple:
        if node_id not in done:
            entry = prompt[node_id]
            kwargs = {}
            for key, value in entry["inputs"].items():
                if isinstance(value, list):  # a link: [node id, output index]
                    kwargs[key] = run(value[0])[value[1]]
                else:
                    if entry["class_type"] in nodes:
                        check_value(nodes[entry["class_type"]], key, value)
                    kwargs[key] = value
            if entry["class_type"] in nodes:
                node = nodes[entry["class_type"]]
                done[node_id] = getattr(node(), node.FUNCTION)(**kwargs)
            else:
                done[node_id] = other[entry["class_type"]](**kwargs)
        return done[node_id]

    for node_id in prompt:
        run(node_id)
    return done


def tiny_prompt(tmp_path) -> dict:
    """The example workflow on the tiny preset, short and small (what the CI machine affords)."""
    prompt = json.loads(WORKFLOW.read_text())
    prompt["1"]["inputs"]["image"] = str(EXAMPLE_IMAGE)
    prompt["2"]["inputs"]["preset"] = "tiny"
    prompt["3"]["inputs"].update(speech_file=str(EXAMPLE_SPEECH), max_duration=1.0)
    prompt["4"]["inputs"].update(steps=2, size=64)
    return prompt


@pytest.mark.slow
def test_the_example_workflow_runs_to_an_image_batch_and_audio_that_make_a_video(tmp_path):
    nodes = load_pack().NODE_CLASS_MAPPINGS
    outputs = {"folder": tmp_path}
    done = run_workflow(tiny_prompt(tmp_path), nodes, outputs)
    images, audio, fps = done["5"]
    frames = 25  # int(23 * 1.0 // 4) * 4 + 5: one second at 23 fps
    assert images.dtype == torch.float32 and images.shape[0] == frames and images.shape[-1] == 3
    assert max(images.shape[1:3]) == 64 and images.min() >= 0.0 and images.max() <= 1.0
    assert fps == 23.0 and audio["sample_rate"] == 16_000
    assert audio["waveform"].shape == (1, 1, round(frames / 23 * 16_000))
    speech, rate = soundfile.read(EXAMPLE_SPEECH, dtype="float32")
    assert rate == 16_000 and np.array_equal(audio["waveform"][0, 0].numpy(), speech[: audio["waveform"].shape[-1]])
    info = probe(outputs["video"])
    assert (info.frames, info.fps, info.video_codec, info.audio_codec) == (frames, 23.0, "h264", "aac")

    # The same speech as an AUDIO from another node (LoadAudio's dict) gives the same video.
    samples, rate = soundfile.read(EXAMPLE_SPEECH, dtype="float32", always_2d=True)
    prompt = tiny_prompt(tmp_path)
    prompt["8"] = {"class_type": "AudioSource", "inputs": {}}
    prompt["3"]["inputs"].update(speech_file="", audio=["8", 0])
    source = {"AudioSource": lambda: ({"waveform": torch.from_numpy(samples.T.copy())[None], "sample_rate": rate},)}
    from_audio = run_workflow(prompt, nodes, outputs, source)
    assert torch.equal(from_audio["5"][0], images)


def test_speech_and_portrait_mistakes_are_one_line_errors(tmp_path):
    nodes = load_pack().NODE_CLASS_MAPPINGS
    speech = nodes["FantasyTalkingSpeech"]()
    with pytest.raises(MissingInput, match=r"^give the speech: a file path in speech_file, or connect an AUDIO$"):
        speech.load(speech_file="  ", fps=23, max_duration=10.0)
    with pytest.raises(Exception, match=r"^Speech file not found: .*nothing.wav$"):
        speech.load(speech_file=str(tmp_path / "nothing.wav"), fps=23, max_duration=10.0)
    from fantasy.comfyui.convert import image_to_pil

    with pytest.raises(MissingInput, match=r"^the portrait must be a ComfyUI IMAGE \(a \[batch, height, width, channels\] "
                                           r"tensor\)$"):
        image_to_pil(torch.zeros(3, 64, 64))
    loaded = speech.load(speech_file=str(EXAMPLE_SPEECH), fps=25, max_duration=3.0)[0]
    assert (loaded.path, loaded.fps, loaded.max_duration) == (Path(EXAMPLE_SPEECH), 25, 3.0)
