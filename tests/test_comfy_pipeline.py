"""The real preset from a ComfyUI models folder, at the real widths with reduced depth, on the CPU.

Two folders, each written here in its publisher's exact layout (`tests/comfy_files.py`):
- Comfy-Org's: `wan2.1_i2v_720p_14B_fp8_scaled` (1 of 40 blocks), `umt5_xxl_fp8_e4m3fn_scaled` (1 of 24 layers,
  vocabulary cut to 4,096, its tokenizer inside), `clip_vision_h` (2 of 32 layers), `wan_2.1_vae`;
- kijai's: `Wan2_1-I2V-14B-720P_fp8_e4m3fn`, `umt5-xxl-enc-bf16` (no tokenizer inside),
  `open-clip-xlm-roberta-large-vit-huge-14_visual_fp16`, `Wan2_1_VAE_bf16`.
Our weights folder then holds only what ComfyUI does not have: wav2vec2 and the released adapter (and, for
kijai's umT5, the tokenizer).
"""

from __future__ import annotations

import pytest
import torch

from fantasy.weights.real import ADAPTER_PART, WAN_PART, WAV2VEC_PART, check_real_weights, files_read
from tests.mp4_probe import probe

from . import comfy_files as cf
from .conftest import EXAMPLE_IMAGE, EXAMPLE_SPEECH

pytestmark = [pytest.mark.usefixtures("empty_hf_cache"), pytest.mark.slow]


def weights_folder(root, tokenizer: bool = False):
    from tools import real_layout

    real_layout.write_wav2vec2_folder(root / WAV2VEC_PART.folder)
    real_layout.write_official_ckpt(root / ADAPTER_PART.folder / ADAPTER_PART.required[0], 1)
    if tokenizer:
        real_layout.write_tokenizer(root / WAN_PART.folder / "tokenizer")
    return root


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    """Comfy-Org's files in a ComfyUI folder, our weights folder beside it; the tensors written, by role."""
    base = tmp_path_factory.mktemp("comfy")
    models = base / "ComfyUI" / "models"
    written = {
        "dit": cf.write_real_width_dit(models / "diffusion_models" / cf.COMFY_DIT["fp8_scaled"], "comfy_fp8_scaled"),
        "text_encoder": cf.write_real_width_umt5(models / "text_encoders" / cf.COMFY_UMT5["fp8_scaled"],
                                                 "comfy_fp8_scaled", spiece=cf.spiece_model()),
        "clip_vision": cf.write_real_width_clip(models / "clip_vision" / cf.COMFY_CLIP, "transformers"),
        "vae": cf.write_real_vae(models / "vae" / cf.COMFY_VAE, torch.bfloat16),
    }
    return base, models, weights_folder(base / "weights"), written


def test_comfy_orgs_files_run_the_real_preset_with_no_wan_folder(comfy, capfd, tmp_path):
    """fp8-scaled DiT held in fp8 (the auto choice without a GGUF), scaled umT5 with its own tokenizer; an mp4.

    Computed in fp32 here: bf16 matmuls on a CPU are emulated and many times slower (the kijai test below loads
    in bf16, the GPU default)."""
    from fantasy.generation import Settings, generate
    from fantasy.weights.presets import get_preset, load_pipeline

    base, models, root, written = comfy
    capfd.readouterr()
    pipe = load_pipeline("real", device="cpu", weights=root, comfy_models=base / "ComfyUI", allow_cpu=True,
                         dtype=torch.float32)
    err = capfd.readouterr().err.splitlines()
    assert err[-1] == (f"from the ComfyUI folder {models}: dit {cf.COMFY_DIT['fp8_scaled']}, text encoder "
                       f"{cf.COMFY_UMT5['fp8_scaled']}, clip vision {cf.COMFY_CLIP}, vae {cf.COMFY_VAE}")
    assert err[0].startswith("converted ") and len(err) == 2  # the released adapter, once; nothing else said
    assert (pipe.dit_choice.mode, pipe.dit_choice.auto) == ("bf16-fp8-storage", True)
    assert pipe.dit_choice.reason == ("auto: no CUDA GPU to fit bf16 on; no Q8_0 file, so "
                                      f"{cf.COMFY_DIT['fp8_scaled']} is held in fp8 (bf16 compute)")
    assert not (root / WAN_PART.folder).exists()  # nothing came from a Wan-AI folder: there is none

    paths = check_real_weights(root, "bf16", comfy=models)
    assert paths["wan"] is None and set(paths["comfy"]) == {"dit", "text_encoder", "clip_vision", "vae"}
    assert {p.name for p in files_read(paths)} >= {cf.COMFY_UMT5["fp8_scaled"], cf.COMFY_CLIP, cf.COMFY_VAE,
                                                   cf.COMFY_DIT["fp8_scaled"], "config.json"}

    # The values the files mean, where they belong: the DiT at 5120 wide (fp8 storage upcasts per layer).
    dit_q = cf.expected_weights(written["dit"], torch.float32)["blocks.0.self_attn.q.weight"]
    to_q = pipe.transformer.blocks[0].attn1.to_q.weight
    assert to_q.shape == (5120, 5120) and to_q.dtype == torch.float8_e4m3fn
    assert torch.equal(to_q.float(), dit_q.to(torch.float8_e4m3fn).float())
    umt5_q = cf.expected_weights(written["text_encoder"], torch.float32)["encoder.block.0.layer.0.SelfAttention.q.weight"]
    assert torch.equal(pipe.text_encoder.encoder.block[0].layer[0].SelfAttention.q.weight, umt5_q)
    assert pipe.text_encoder.config.d_model == 4096 and pipe.text_encoder.dtype == torch.float32
    clip_fc1 = written["clip_vision"]["vision_model.encoder.layers.1.mlp.fc1.weight"]
    assert torch.equal(pipe.image_encoder.vision_model.encoder.layers[1].mlp.fc1.weight, clip_fc1.float())
    assert pipe.image_encoder.config.hidden_size == 1280 and pipe.image_encoder.config.num_attention_heads == 16
    assert torch.equal(pipe.vae.decoder.conv_in.weight, written["vae"]["decoder.conv1.weight"].float())
    assert pipe.tokenizer("a person is talking").input_ids[-1] == 1  # the file's SentencePiece model, </s> last

    out = tmp_path / "comfy.mp4"
    settings = Settings(steps=1, max_frames=9, max_duration=0.3, longest_edge=64, text_guidance=1.0)  # no negative pass
    result = generate(pipe, EXAMPLE_IMAGE, EXAMPLE_SPEECH, out, settings, get_preset("real"))
    info = probe(out)
    assert (result.num_frames, info.frames, info.width, info.height) == (9, 9, 64, 64)
    assert info.video_codec == "h264" and info.audio_codec == "aac"


def test_kijais_files_load_with_the_tokenizer_from_our_folder(tmp_path):
    """kijai's spellings (Wan's own key names, plain fp8); the umT5 file has no tokenizer: only `tokenizer/` is
    needed from the Wan-AI folder, and without it the error names exactly that."""
    from fantasy.errors import WeightsMissing
    from fantasy.weights.presets import load_pipeline

    models = tmp_path / "models"
    dit = cf.write_real_width_dit(models / "diffusion_models" / cf.KIJAI_DIT["fp8_e4m3fn"], "kijai_fp8_e4m3fn")
    umt5 = cf.write_real_width_umt5(models / "text_encoders" / cf.KIJAI_UMT5, "kijai_bf16")
    cf.write_real_width_clip(models / "clip_vision" / cf.KIJAI_CLIP, "wan")
    vae = cf.write_real_vae(models / "vae" / cf.KIJAI_VAE["bf16"], torch.bfloat16)
    root = weights_folder(tmp_path / "weights")
    with pytest.raises(WeightsMissing, match=r"^Missing weight file .*/Wan2.1-I2V-14B-720P-Diffusers/tokenizer/"
                                             r"tokenizer.json .* \(or put its ComfyUI single file into "):
        check_real_weights(root, "bf16", comfy=models)
    weights_folder(root, tokenizer=True)
    assert check_real_weights(root, "bf16", comfy=models)["wan_part"].required == WAN_PART.required[:3]

    pipe = load_pipeline("real", device="cpu", weights=root, comfy_models=models, dit="bf16", allow_cpu=True)
    text = cf.expected_weights(dit, torch.bfloat16)["text_embedding.0.weight"]  # fp8 in kijai's file
    assert torch.equal(pipe.transformer.condition_embedder.text_embedder.linear_1.weight, text)
    assert pipe.transformer.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    gate = umt5["blocks.0.ffn.gate.0.weight"]
    assert torch.equal(pipe.text_encoder.encoder.block[0].layer[1].DenseReluDense.wi_0.weight, gate)
    assert torch.equal(pipe.vae.encoder.conv_in.weight, vae["encoder.conv1.weight"].float())
    assert pipe.tokenizer("a person").input_ids == [3, 5]  # our folder's (word-level, no </s>: tools.real_layout's)
