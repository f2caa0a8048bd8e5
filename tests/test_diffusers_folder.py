"""A diffusers folder: `save_pretrained` -> `from_pretrained` gives the same pipeline (adapter, motion and identity
modules included), `fantasy convert --diffusers` writes one, `--weights FOLDER` reads one. Tiny preset here; the
real widths at reduced depth are in `tests/test_real_width.py`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from fantasy.errors import CheckpointMismatch, FantasyError, InvalidSetting
from fantasy.model.adapter import FantasyAudioAttnProcessor
from fantasy.model.pipeline import FantasyTalkingPipeline
from fantasy.model.saved_adapter import FantasyTalkingAdapter
from fantasy.weights.presets import load_pipeline

from .conftest import EXAMPLE_IMAGE, speech_like

FACE = Image.new("RGB", (32, 32), (200, 150, 120))
COMPONENTS = ["audio_adapter", "audio_encoder", "audio_proj", "feature_extractor", "image_encoder", "image_processor",
              "scheduler", "text_encoder", "tokenizer", "transformer", "vae"]


def call(pipe, output_type="latent", **kw):
    pipe.set_progress_bar_config(disable=True)
    return pipe(image=EXAMPLE_IMAGE, audio=speech_like(0.5), sampling_rate=16_000, num_frames=9,
                num_inference_steps=2, generator=torch.Generator().manual_seed(4), output_type=output_type, **kw).frames


def with_trained_modules(pipe):
    """The tiny pipeline with motion and identity modules holding non-zero weights (as after training)."""
    from fantasy.model.identity import install_identity_module
    from fantasy.model.motion import install_motion_module

    pipe.motion_context = install_motion_module(pipe.transformer)
    pipe.identity_context = install_identity_module(pipe.transformer, 16)
    generator = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for name, param in pipe.transformer.named_parameters():
            if "motion_intensity" in name or ".identity." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return pipe


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The tiny pipeline with trained-looking motion and identity modules, its output, and its saved folder."""
    pipe = with_trained_modules(load_pipeline("tiny"))
    before = call(pipe, motion=(0.2, 0.9), face_image=FACE)
    folder = tmp_path_factory.mktemp("saved") / "tiny-diffusers"
    pipe.save_pretrained(folder)
    return pipe, before, folder


def test_the_folder_names_every_component_and_keeps_the_transformer_wans(saved):
    pipe, _, folder = saved
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "FantasyTalkingPipeline"
    assert sorted(k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0]) == COMPONENTS
    assert index["audio_adapter"] == ["fantasy.model.saved_adapter", "FantasyTalkingAdapter"]
    assert index["audio_proj"] == ["fantasy.model.adapter", "AudioProjModel"]
    assert index["audio_encoder"] == ["transformers", "Wav2Vec2Model"] and index["default_longest_edge"] == 128
    # The transformer folder is Wan's alone: exactly the keys of a stock WanTransformer3DModel.
    from diffusers import WanTransformer3DModel

    stock = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(folder / "transformer"))
    with safe_open(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(stock.state_dict())
    # The adapter: each block's audio and identity K/V, and the motion module.
    config = json.loads((folder / "audio_adapter" / "config.json").read_text())
    assert {k: config[k] for k in ("num_blocks", "context_dim", "inner_dim", "identity_token_dim")} == {
        "num_blocks": 2, "context_dim": 16, "inner_dim": 24, "identity_token_dim": 16}
    with safe_open(str(folder / "audio_adapter" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert torch.equal(f.get_tensor("blocks.1.k_proj.weight"), pipe.transformer.blocks[1].attn2.processor.k_proj.weight)
    assert keys == {f"blocks.{i}.{part}{kv}_proj.weight" for i in (0, 1) for part in ("", "identity.") for kv in "kv"} | {
        f"motion_intensity.mlp.{n}.{w}" for n in (0, 2, 4) for w in ("weight", "bias")}


def test_saving_leaves_the_pipeline_as_it_was(saved):
    pipe, before, _ = saved
    assert all(isinstance(b.attn2.processor, FantasyAudioAttnProcessor) for b in pipe.transformer.blocks)
    assert pipe.components["audio_adapter"] is None and hasattr(pipe.transformer, "motion_intensity")
    assert torch.equal(call(pipe, motion=(0.2, 0.9), face_image=FACE), before)


def test_from_pretrained_gives_the_same_video(saved):
    pipe, before, folder = saved
    loaded = FantasyTalkingPipeline.from_pretrained(folder, dtype=torch.float32)
    assert loaded.motion_context is not None and loaded.identity_context is not None
    assert loaded.components["audio_adapter"] is None  # its weights went into the transformer
    assert torch.equal(call(loaded, motion=(0.2, 0.9), face_image=FACE), before)
    frames = call(loaded, "np", motion=(0.2, 0.9), face_image=FACE)
    assert np.array_equal(frames, call(pipe, "np", motion=(0.2, 0.9), face_image=FACE))
    assert frames.shape == (1, 9, 128, 128, 3)  # the tiny preset's size, from model_index.json


def test_one_dtype_is_the_dits_and_umt5s_and_the_rest_stays_fp32(saved):
    _, _, folder = saved
    loaded = FantasyTalkingPipeline.from_pretrained(folder, dtype=torch.bfloat16)
    assert loaded.transformer.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert loaded.transformer.blocks[0].attn2.processor.k_proj.weight.dtype == torch.bfloat16  # the blocks' dtype
    assert loaded.text_encoder.dtype == torch.bfloat16
    assert {loaded.vae.dtype, loaded.image_encoder.dtype, loaded.audio_encoder.dtype, loaded.audio_proj.dtype} == {
        torch.float32}
    assert loaded.transformer.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32  # Wan keeps it
    from fantasy.model.precision import precision_of

    assert precision_of(loaded.transformer) == "mixed"


def test_a_bf16_pipeline_comes_back_bit_for_bit(tmp_path):
    """The bf16 tiny pipeline (the real preset's dtypes) saved and loaded: the same frames. Two things had to hold:
    RoPE's fp32 tables (`fantasy.weights.quantize.keep_fp32_modules_in_fp32`) and aligned CPU weights
    (`fantasy.model.pipeline.align_cpu_tensors`)."""
    pipe = load_pipeline("tiny", dtype=torch.bfloat16)
    pipe.save_pretrained(tmp_path / "bf16")
    loaded = FantasyTalkingPipeline.from_pretrained(tmp_path / "bf16", dtype=torch.bfloat16)
    assert all(t.data_ptr() % 64 == 0 for t in loaded.transformer.parameters())
    assert np.array_equal(call(loaded, "np"), call(pipe, "np"))


def test_an_adapter_of_another_model_is_refused():
    from fantasy.weights.tiny import tiny_components

    adapter = FantasyTalkingAdapter(num_blocks=3, context_dim=16, inner_dim=24)
    with pytest.raises(CheckpointMismatch, match=r"^this audio adapter is for 3 blocks, context 16, width 24; "
                                                 r"the transformer has 2 blocks, context 16, width 24$"):
        FantasyTalkingPipeline(**tiny_components(), audio_adapter=adapter)


def test_a_quantized_dit_is_not_saved(tmp_path):
    from fantasy.weights.quantize import enable_fp8_storage

    pipe = load_pipeline("tiny")
    enable_fp8_storage(pipe.transformer, torch.float32)
    with pytest.raises(InvalidSetting, match=r"these are quantized \(torch.float8_e4m3fn\): load the bf16 DiT"):
        pipe.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_convert_writes_a_folder_that_weights_reads(tmp_path, capsys):
    from fantasy.cli import main

    out = tmp_path / "fantasy-diffusers"
    assert main(["convert", "--diffusers", str(out), "--preset", "tiny"]) == 0
    assert capsys.readouterr().out.strip() == (f"wrote {out} (a diffusers folder: "
                                               f"FantasyTalkingPipeline.from_pretrained('{out}') or --weights {out})")
    assert (out / "model_index.json").is_file() and [p.name for p in tmp_path.iterdir()] == ["fantasy-diffusers"]
    # --weights FOLDER: the real preset's loader takes it (here on the CPU, in fp32), the same video as the tiny preset
    pipe = load_pipeline("real", device="cpu", weights=out, allow_cpu=True, dtype=torch.float32)
    assert pipe.dit_choice.describe() == "bf16 (the diffusers folder's DiT)"
    assert torch.equal(call(pipe), call(load_pipeline("tiny")))
    with pytest.raises(FantasyError, match=r"is a diffusers folder: its DiT is the saved bf16 one, not a GGUF file"):
        load_pipeline("real", device="cpu", weights=out, allow_cpu=True, dit="q8_0")
    # a second conversion never writes into an existing folder
    assert main(["convert", "--diffusers", str(out), "--preset", "tiny"]) == 2
    assert "already exists and is not an empty folder" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["convert"], "error: convert needs SRC DST (the released .ckpt and the .safetensors to write), or --diffusers OUT"),
    (["convert", "a.ckpt", "b.safetensors", "--diffusers", "out"], "error: convert takes SRC DST, or --diffusers OUT, "
                                                                   "not both"),
])
def test_convert_says_what_it_needs(argv, message, capsys):
    from fantasy.cli import main

    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == message


def test_the_docs_five_line_script_runs(saved, tmp_path, monkeypatch):
    """docs/diffusers.md's first script, as printed, on the saved tiny folder (paths, device and steps swapped in)."""
    from pathlib import Path

    from tests.mp4_probe import probe

    from .conftest import EXAMPLE_SPEECH

    doc = (Path(__file__).resolve().parent.parent / "docs" / "diffusers.md").read_text()
    script = doc.split("## Five lines", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert len([line for line in script.splitlines() if line.strip()]) == 5
    _, _, folder = saved
    for printed, here in [('"fantasytalking-diffusers"', repr(str(folder))), ('"cuda"', '"cpu"'),
                          ('"portrait.png"', repr(str(EXAMPLE_IMAGE))), ('"speech.wav"', repr(str(EXAMPLE_SPEECH))),
                          ("generator=", "num_inference_steps=2, output_type='pil', generator=")]:
        assert printed in script
        script = script.replace(printed, here)
    monkeypatch.chdir(tmp_path)
    exec(compile(script, "docs/diffusers.md", "exec"), {})
    info = probe(tmp_path / "talking.mp4")
    assert (info.frames, info.width, info.height, info.has_audio) == (149, 128, 128, True)  # 6.4 s: 2 windows
