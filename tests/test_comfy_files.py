"""ComfyUI's and kijai's single files: each kind, in each of its published layouts, loads as the file means it.

The files are written here in their exact layouts (`tests/comfy_files.py`): names, dtypes, key spellings, fp8
scales, the tokenizer inside the umT5 file. Small widths where the loader's code is the same at any width;
the real widths (at reduced depth) and a whole generation from a ComfyUI folder are in test_comfy_pipeline.py.
"""

from __future__ import annotations

import random

import pytest
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from safetensors.torch import save_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    T5Config,
    T5EncoderModel,
    UMT5Config,
    UMT5EncoderModel,
)

from fantasy.errors import CheckpointMismatch, InvalidSetting
from fantasy.weights.clip_vision_file import load_clip_vision_file
from fantasy.weights.comfy_folder import COMFY_ENV, comfy_models_dir, find_comfy_files, storage_of
from fantasy.weights.scaled_fp8 import dequantize
from fantasy.weights.umt5_file import SPIECE_KEY, load_umt5_file, tokenizer_from_spiece, umt5_tokenizer
from fantasy.weights.wan_files import dit_config, dit_shapes, load_dit_file, load_vae_file
from fantasy.weights.wan_keys import to_original_key

from . import comfy_files as cf

# ---- scaled fp8 ------------------------------------------------------------------------------------------


def test_a_scaled_fp8_weight_is_its_fp8_values_times_its_scale_and_the_helpers_are_dropped():
    weight = torch.randn(8, 4)
    values, scale = cf.scaled_fp8(weight)
    norm = torch.randn(4)
    state = {"a.weight": values, "a.scale_weight": scale, "a.scale_input": torch.tensor(1.0),
             "scaled_fp8": torch.empty(0, dtype=cf.FP8), "norm.weight": norm}
    out = dequantize(state, torch.bfloat16)
    assert set(out) == {"a.weight", "norm.weight"}
    assert torch.equal(out["a.weight"], (values.float() * scale).to(torch.bfloat16))
    assert out["norm.weight"] is norm  # not fp8: the very same tensor
    torch.testing.assert_close(out["a.weight"].float(), weight, rtol=0.07, atol=1e-3)  # fp8's 3 mantissa bits


def test_plain_fp8_is_cast_per_row_scales_apply_per_row_and_newer_scale_names_are_read():
    plain = torch.randn(3, 2).to(cf.FP8)
    rows = torch.randn(3, 2).to(cf.FP8)
    row_scale = torch.tensor([1.0, 2.0, 4.0])
    out = dequantize({"p.weight": plain, "r.weight": rows, "r.weight_scale": row_scale,
                      "r.comfy_quant": torch.zeros(3, dtype=torch.uint8)}, torch.float32)
    assert set(out) == {"p.weight", "r.weight"}
    assert torch.equal(out["p.weight"], plain.float())
    assert torch.equal(out["r.weight"], rows.float() * row_scale[:, None])


def test_a_scale_without_its_weight_or_of_the_wrong_size_is_refused():
    with pytest.raises(CheckpointMismatch, match="'b.scale_weight' scales 'b.weight', which the file does not hold"):
        dequantize({"b.scale_weight": torch.tensor(1.0)}, torch.float32)
    with pytest.raises(CheckpointMismatch, match=r"the scale of 'c.scale_weight' has 2 values for a weight of shape \(3, 2\)"):
        dequantize({"c.weight": torch.zeros(3, 2, dtype=cf.FP8), "c.scale_weight": torch.ones(2)}, torch.float32)


# ---- umT5 --------------------------------------------------------------------------------------------------


def tiny_umt5(seed: int = 0) -> UMT5EncoderModel:
    torch.manual_seed(seed)
    config = UMT5Config(vocab_size=512, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    return UMT5EncoderModel(config).eval()


@pytest.mark.parametrize("variant", ["comfy_fp16", "comfy_fp8_scaled", "kijai_bf16"])
def test_umt5_single_files_hold_what_they_mean_and_encode_like_the_source(tmp_path, variant):
    """Every tensor lands where it belongs with the value the file means; the encoding equals the source model's
    with those values (a swapped FFN branch or attention map would change it)."""
    source = tiny_umt5()
    spiece = cf.spiece_model() if variant.startswith("comfy") else None
    written = cf.umt5_file_state(source, variant, spiece)
    path = cf.save(written, tmp_path / (cf.COMFY_UMT5.get(variant[6:]) or cf.KIJAI_UMT5))
    loaded = load_umt5_file(path, torch.float32)

    meant = cf.expected_weights({k: v for k, v in written.items() if k != SPIECE_KEY}, torch.float32)
    if variant == "kijai_bf16":
        meant = {hf: meant[cf.umt5_wan_key(hf)] for hf in source.state_dict() if hf != "encoder.embed_tokens.weight"}
    state = loaded.state_dict()
    assert all(torch.equal(state[k], v.float()) for k, v in meant.items())
    assert loaded.encoder.embed_tokens.weight is loaded.shared.weight
    reference = tiny_umt5()
    reference.load_state_dict({k: v.float() for k, v in meant.items()}, strict=False)
    reference.tie_weights()
    ids = torch.tensor([[5, 9, 100, 7, 1, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0]])
    assert torch.equal(loaded(ids, attention_mask=mask).last_hidden_state,
                       reference(ids, attention_mask=mask).last_hidden_state)
    assert (umt5_tokenizer(path) is None) == (variant == "kijai_bf16")


@pytest.mark.parametrize("byte_fallback", [False, True])
def test_the_tokenizer_a_comfy_umt5_file_carries_encodes_exactly_as_sentencepiece(byte_fallback):
    import sentencepiece

    model = cf.spiece_model(byte_fallback=byte_fallback, vocab_size=300 if byte_fallback else 40)
    reference = sentencepiece.SentencePieceProcessor(model_proto=model, add_eos=True)
    tokenizer = tokenizer_from_spiece(model)
    rng = random.Random(0)
    alphabet = "abcdelmnoprstw  ÉéＡ你\t\n-!.,'?1"
    texts = ["", " ", "a person is talking", "  two   spaces  ", "ﬁ ligature Ｆｕｌｌ"] + [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24))) for _ in range(400)]
    mismatches = [t for t in texts if tokenizer(t).input_ids != reference.encode(t)]
    assert mismatches == []
    size = reference.get_piece_size()
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 3)
    assert tokenizer.convert_tokens_to_ids(["<extra_id_299>", "<extra_id_0>"]) == [size, size + 299]
    padded = tokenizer(["a person"], padding="max_length", max_length=12, truncation=True, return_tensors="pt")
    assert padded.input_ids[0, -1] == 0 and padded.attention_mask.sum() == len(reference.encode("a person"))


def test_a_text_encoder_that_is_not_umt5_is_refused_in_one_line(tmp_path):
    t5 = T5EncoderModel(T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
                                 feed_forward_proj="gated-gelu"))
    path = cf.save({k: v for k, v in t5.state_dict().items() if "embed_tokens" not in k}, tmp_path / "t5xxl_fp16.safetensors")
    with pytest.raises(CheckpointMismatch, match=r"^t5xxl_fp16.safetensors is not Wan's umT5-XXL text encoder "
                                                 r"\(umt5_xxl_\*.safetensors\): it is T5-XXL \(Flux's and SD3's"):
        load_umt5_file(path)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2))
    clip_l = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in clip.state_dict().items()}
    path = cf.save(clip_l, tmp_path / "clip_l.safetensors")  # ComfyUI's clip_l spelling
    with pytest.raises(CheckpointMismatch, match=r"^clip_l.safetensors is not Wan's umT5-XXL text encoder .*: it has no "
                                                 r"umT5 encoder weights \(first keys: text_model"):
        load_umt5_file(path)
    junk = tmp_path / "umt5_xxl_fp16.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointMismatch, match=r"^umt5_xxl_fp16.safetensors is not a readable .safetensors file"):
        load_umt5_file(junk)


def test_a_umt5_file_missing_tensors_is_refused_naming_one(tmp_path):
    written = cf.umt5_file_state(tiny_umt5(), "comfy_fp16")
    del written["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    path = cf.save(written, tmp_path / "umt5_xxl_fp16.safetensors")
    with pytest.raises(CheckpointMismatch, match=r"^umt5_xxl_fp16.safetensors: a umT5 file should hold 22 tensors; "
                                                 r"1 missing \(e.g. encoder.block.1.layer.1.DenseReluDense.wo.weight\)$"):
        load_umt5_file(path)


# ---- CLIP vision -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["transformers", "open_clip", "wan"])
def test_clip_vision_files_in_each_spelling_give_the_same_tower(tmp_path, layout):
    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=28, patch_size=14, projection_dim=16, hidden_act="gelu")
    source = CLIPVisionModelWithProjection(config).eval().half().float()  # the file's fp16 values
    name = cf.KIJAI_CLIP if layout == "wan" else cf.COMFY_CLIP
    loaded = load_clip_vision_file(cf.save(cf.clip_file_state(source, layout), tmp_path / name), heads=2)
    assert type(loaded) is CLIPVisionModelWithProjection and loaded.dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), source.state_dict().values(), strict=True))
    assert loaded.config.image_size == 28 and loaded.config.num_hidden_layers == 2
    pixels = torch.randn(1, 3, 28, 28)
    assert torch.equal(loaded(pixels, output_hidden_states=True).hidden_states[-2],
                       source(pixels, output_hidden_states=True).hidden_states[-2])


def test_a_file_that_is_no_clip_vision_tower_is_refused(tmp_path):
    path = cf.save({"model.layers.0.weight": torch.zeros(2)}, tmp_path / "clip_vision_h.safetensors")
    with pytest.raises(CheckpointMismatch, match=r"^clip_vision_h.safetensors is not a CLIP vision model "
                                                 r"\(clip_vision_h.safetensors\): no patch embedding"):
        load_clip_vision_file(path)


# ---- DiT ---------------------------------------------------------------------------------------------------------


def small_dit(seed: int = 0, **changes) -> WanTransformer3DModel:
    """An I2V DiT whose heads have Wan's width (128), so its configuration is read from the shapes alone."""
    torch.manual_seed(seed)
    config = dict(patch_size=(1, 2, 2), num_attention_heads=1, attention_head_dim=128, in_channels=36, out_channels=16,
                  text_dim=32, freq_dim=256, ffn_dim=64, num_layers=2, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=16, added_kv_proj_dim=128, rope_max_seq_len=1024)
    return WanTransformer3DModel(**(config | changes)).eval()


DIT_VARIANTS = ["comfy_bf16", "comfy_fp16", "comfy_fp8_e4m3fn", "comfy_fp8_scaled", "kijai_fp8_e4m3fn",
                "kijai_fp8_scaled"]


@pytest.mark.parametrize("variant", DIT_VARIANTS)
def test_dit_single_files_load_every_weight_as_the_file_means_it(tmp_path, variant):
    """bf16 compute: fp8 weights times their scales in bf16; the fp32-kept modules hold the file's exact values."""
    written = cf.dit_file_state(small_dit(), variant)
    if variant.startswith("kijai"):  # kijai's files keep the names; some carry the full-checkpoint prefix
        written = {f"model.diffusion_model.{k}" if k != "scaled_fp8" else k: v for k, v in written.items()}
    path = cf.save(written, tmp_path / cf.dit_file_name(variant))
    loaded = load_dit_file(path, torch.bfloat16)
    meant = cf.expected_weights({k.removeprefix("model.diffusion_model."): v for k, v in written.items()}, torch.bfloat16)
    fp32_kept = 0
    for name, value in loaded.state_dict().items():
        expected = meant[to_original_key(name)]
        assert value.dtype in (torch.bfloat16, torch.float32), name
        assert torch.equal(value, expected.to(value.dtype)) if value.dtype == torch.bfloat16 else \
            torch.equal(value, expected.float()), name
        fp32_kept += value.dtype == torch.float32
    assert fp32_kept > 10  # time embedder, modulation tables, the affine norms


def test_the_dit_configuration_is_read_from_the_shapes_of_the_14b_file():
    with torch.device("meta"):
        full = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128,
                                     in_channels=36, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824,
                                     num_layers=40, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
                                     image_dim=1280, added_kv_proj_dim=5120, rope_max_seq_len=1024)
    shapes = {to_original_key(k): tuple(v.shape) for k, v in full.state_dict().items()}
    config = dit_config(shapes, "wan2.1_i2v_720p_14B_bf16.safetensors")
    assert {k: full.config[k] for k in config} == {**config, "patch_size": (1, 2, 2)}


def test_dit_shapes_come_from_a_gguf_header(tmp_path):
    from .fake_weights import write_gguf

    source = small_dit(image_dim=32)  # rows of whole 32-value Q8_0 blocks, as the real file's
    original = cf.dit_file_state(source, "comfy_bf16")
    path = tmp_path / "wan2.1-i2v-14b-720p-Q8_0.gguf"
    assert "Q8_0" in write_gguf(original, path).values()  # some tensors really are Q8_0
    assert dit_shapes(path) == {k: tuple(v.shape) for k, v in original.items()}


def test_dit_files_of_other_models_are_refused_before_loading(tmp_path):
    t2v = cf.dit_file_state(small_dit(in_channels=16, image_dim=None, added_kv_proj_dim=None), "comfy_bf16")
    path = cf.save(t2v, tmp_path / "wan2.1_t2v_14B_bf16.safetensors")
    with pytest.raises(CheckpointMismatch, match=r"^wan2.1_t2v_14B_bf16.safetensors is not a Wan2.1 image-to-video DiT "
                                                 r".*: it is a text-to-video model \(16 input channels, no image branch\)$"):
        load_dit_file(path)
    path = cf.save({"double_blocks.0.img_attn.qkv.weight": torch.zeros(2, 2)}, tmp_path / "flux1-dev.safetensors")
    with pytest.raises(CheckpointMismatch, match=r"^flux1-dev.safetensors is not a Wan2.1 image-to-video DiT .*: it has "
                                                 r"no Wan DiT weights \(first keys: double_blocks"):
        load_dit_file(path)


# ---- VAE -----------------------------------------------------------------------------------------------------------


def test_the_vae_key_spelling_is_the_inverse_of_diffusers_converter():
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    with torch.device("meta"):
        keys = list(AutoencoderKLWan().state_dict())
    original = {cf.vae_original_key(k): k for k in keys}
    assert len(original) == len(keys)
    assert convert_wan_vae_to_diffusers(original) == dict(zip(keys, keys, strict=True))  # each lands on itself
    assert "decoder.upsamples.4.shortcut.weight" in original and "encoder.downsamples.5.time_conv.weight" in original


@pytest.mark.slow
@pytest.mark.parametrize("name, dtype", [(cf.COMFY_VAE, torch.bfloat16), (cf.KIJAI_VAE["fp32"], torch.float32)])
def test_the_wan_vae_single_file_loads_through_diffusers(tmp_path, name, dtype):
    from tools.real_layout import random_model

    source = random_model(AutoencoderKLWan, seed=3)
    loaded = load_vae_file(cf.save(cf.vae_file_state(source, dtype), tmp_path / name))
    assert loaded.dtype == torch.float32
    got, want = loaded.state_dict(), source.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k].to(dtype).float()) for k in want)


def test_another_vae_is_refused(tmp_path):
    wan22 = {"decoder.middle.0.residual.0.gamma": torch.zeros(1), "decoder.upsamples.0.upsamples.0.residual.2.weight":
             torch.zeros(1)}
    with pytest.raises(CheckpointMismatch, match=r"^wan2.2_vae.safetensors is not the Wan2.1 VAE \(wan_2.1_vae."
                                                 r"safetensors\): it is the Wan2.2 VAE \(48 latent channels\)$"):
        load_vae_file(cf.save(wan22, tmp_path / "wan2.2_vae.safetensors"))
    with pytest.raises(CheckpointMismatch, match=r"^ae.safetensors is not the Wan2.1 VAE .*: it has no Wan VAE weights"):
        load_vae_file(cf.save({"encoder.down.0.block.0.conv1.weight": torch.zeros(1)}, tmp_path / "ae.safetensors"))


# ---- the folder ------------------------------------------------------------------------------------------------------


def touch(root, *relative):
    for name in relative:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"x": torch.zeros(1)}, str(path))


def test_a_comfy_models_folder_yields_wan21_i2v_files_by_their_published_names(tmp_path):
    touch(tmp_path, "diffusion_models/wan2.1_i2v_480p_14B_bf16.safetensors",
          "diffusion_models/wan2.1_i2v_720p_14B_fp8_scaled.safetensors",
          "diffusion_models/wan2.1_i2v_720p_14B_fp8_e4m3fn.safetensors",
          "diffusion_models/wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
          "diffusion_models/wan2.1_t2v_14B_bf16.safetensors", "diffusion_models/wan2.1_flf2v_720p_14B_fp16.safetensors",
          "diffusion_models/wan2.1_i2v_720p_14B_bf16.safetensors.part", "unet/wan2.1-i2v-14b-720p-Q8_0.gguf",
          "unet/wan2.1-i2v-14b-720p-Q4_K_M.gguf",
          "text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors", "text_encoders/umt5_xxl_fp16.safetensors",
          "text_encoders/t5xxl_fp16.safetensors", "clip_vision/clip_vision_g.safetensors",
          "clip_vision/clip_vision_h.safetensors", "vae/wan2.2_vae.safetensors", "vae/wan_2.1_vae.safetensors",
          "vae/sdxl_vae.safetensors")
    files = find_comfy_files(tmp_path)
    assert {role: path.name for role, path in files.found().items()} == {
        "dit": "wan2.1_i2v_720p_14B_fp8_scaled.safetensors", "text_encoder": "umt5_xxl_fp16.safetensors",
        "clip_vision": "clip_vision_h.safetensors", "vae": "wan_2.1_vae.safetensors"}
    assert files.notes == (
        "DiT: wan2.1_i2v_720p_14B_fp8_scaled.safetensors (also there: wan2.1_i2v_720p_14B_fp8_e4m3fn.safetensors, "
        "wan2.1_i2v_480p_14B_bf16.safetensors)",
        "text encoder: umt5_xxl_fp16.safetensors (also there: umt5_xxl_fp8_e4m3fn_scaled.safetensors)")
    assert find_comfy_files(tmp_path, want_gguf="q4_k_m").dit.name == "wan2.1-i2v-14b-720p-Q4_K_M.gguf"
    kijai = tmp_path / "kijai"
    touch(kijai, "diffusion_models/WanVideo/Wan2_1-I2V-14B-720P_fp8_e4m3fn.safetensors",
          "text_encoders/umt5-xxl-enc-bf16.safetensors",
          "clip_vision/open-clip-xlm-roberta-large-vit-huge-14_visual_fp16.safetensors",
          "vae/Wan2_1_VAE_bf16.safetensors", "vae/Wan2_1_VAE_fp32.safetensors")
    assert {role: path.name for role, path in find_comfy_files(kijai).found().items()} == {
        "dit": "Wan2_1-I2V-14B-720P_fp8_e4m3fn.safetensors", "text_encoder": "umt5-xxl-enc-bf16.safetensors",
        "clip_vision": "open-clip-xlm-roberta-large-vit-huge-14_visual_fp16.safetensors",
        "vae": "Wan2_1_VAE_fp32.safetensors"}
    assert [storage_of(n) for n in ("a_fp8_e4m3fn_scaled_KJ.safetensors", "umt5-xxl-enc-bf16", "x.safetensors")] == [
        "fp8_scaled", "bf16", ""]


def test_the_folder_comes_from_the_option_or_the_environment_and_may_be_comfyuis_own(tmp_path, monkeypatch):
    touch(tmp_path, "ComfyUI/models/vae/wan_2.1_vae.safetensors")
    monkeypatch.delenv(COMFY_ENV, raising=False)
    assert comfy_models_dir() is None
    assert comfy_models_dir(tmp_path / "ComfyUI") == tmp_path / "ComfyUI" / "models"
    monkeypatch.setenv(COMFY_ENV, str(tmp_path / "ComfyUI" / "models"))
    assert comfy_models_dir() == tmp_path / "ComfyUI" / "models"
    with pytest.raises(InvalidSetting, match=rf"^--comfy-models: {tmp_path}/nowhere is not a folder \(give ComfyUI's "
                                             r"models/ folder\)$"):
        comfy_models_dir(tmp_path / "nowhere")
    monkeypatch.setenv(COMFY_ENV, str(tmp_path))
    with pytest.raises(InvalidSetting, match=rf"^{COMFY_ENV}: {tmp_path} holds none of ComfyUI's model folders "
                                             r"\(clip_vision, diffusion_models, text_encoders, vae\)$"):
        comfy_models_dir()
