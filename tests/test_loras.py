"""LoRAs on the Wan DiT: every published key spelling, several at once with their scales, and one-line refusals.

The reference is the LoRA algebra itself, computed here from the file's tensors: a fused layer must hold
W + scale * (alpha / rank) * up @ down, whatever spelling the file uses.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from fantasy.errors import CheckpointMismatch, InputFileNotFound, InvalidSetting
from fantasy.weights.loras import (
    LORA_ENV,
    LoraSpec,
    chosen_loras,
    load_loras,
    lora_layer_names,
    loras_from_env,
    parse_lora,
    set_lora_scales,
)

from .test_speed import fresh, one_forward

DIM, FFN, RANK, BLOCKS = 24, 32, 4, 2  # the tiny DiT
# Original Wan layer -> (diffusers module, fan in, fan out)
LAYERS = {f"{attn}.{p}": (f"{new}.{target}", DIM, DIM)
          for attn, new in (("self_attn", "attn1"), ("cross_attn", "attn2"))
          for p, target in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"))}
LAYERS |= {"cross_attn.k_img": ("attn2.add_k_proj", DIM, DIM), "cross_attn.v_img": ("attn2.add_v_proj", DIM, DIM),
           "ffn.0": ("ffn.net.0.proj", DIM, FFN), "ffn.2": ("ffn.net.2", FFN, DIM)}


def lora_tensors(seed=0, fan_in_change=0):
    """Per (block, original layer): (down [rank, in], up [out, rank], alpha)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for block in range(BLOCKS):
        for layer, (_, fan_in, fan_out) in LAYERS.items():
            out[block, layer] = (torch.randn(RANK, fan_in + fan_in_change, generator=g) * 0.3,
                                 torch.randn(fan_out, RANK, generator=g) * 0.3, float(2 * RANK))
    return out


def spelled(tensors, spelling):
    """The LoRA as a file in one of the spellings Wan LoRAs are published in."""
    state = {}
    for (block, layer), (down, up, alpha) in tensors.items():
        module = LAYERS[layer][0]
        if spelling == "diffusers":  # diffusers' own (alpha folded into A, as diffusers saves them)
            state[f"transformer.blocks.{block}.{module}.lora_A.weight"] = down * alpha / RANK
            state[f"transformer.blocks.{block}.{module}.lora_B.weight"] = up
            continue
        if spelling == "musubi":  # musubi-tuner: lora_unet_, underscores
            key = f"lora_unet_blocks_{block}_{layer.replace('.', '_')}"
        else:
            prefix = {"comfy": "diffusion_model.", "comfy_ab": "diffusion_model.", "bare": "",
                      "model_prefix": "model.diffusion_model."}[spelling]
            key = f"{prefix}blocks.{block}.{layer}"
        if spelling == "comfy_ab":
            state[f"{key}.lora_A.weight"], state[f"{key}.lora_B.weight"] = down * alpha / RANK, up
        else:
            state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"] = down, up
            state[f"{key}.alpha"] = torch.tensor(alpha)
    return state


def write(tmp_path, name, state):
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def deltas(tensors, scale=1.0):
    """diffusers module name -> scale * alpha / rank * up @ down."""
    return {f"blocks.{block}.{LAYERS[layer][0]}": scale * alpha / RANK * (up @ down)
            for (block, layer), (down, up, alpha) in tensors.items()}


def weights(pipe):
    return {name: module.weight.detach().clone() for name, module in pipe.transformer.named_modules()
            if name.startswith("blocks.") and isinstance(module, torch.nn.Linear) and ".processor" not in name}


@pytest.mark.parametrize("spelling", ["comfy", "comfy_ab", "bare", "model_prefix", "musubi", "diffusers"])
def test_every_published_spelling_fuses_to_the_lora_algebra(tmp_path, spelling):
    tensors = lora_tensors()
    pipe = fresh()
    before = weights(pipe)
    [applied] = load_loras(pipe, [LoraSpec(write(tmp_path, f"{spelling}.safetensors", spelled(tensors, spelling)), 0.7)])
    assert (applied.fused, applied.layers) == (True, BLOCKS * len(LAYERS))
    assert str(applied) == f"LoRA {spelling}.safetensors:0.7: fused into {BLOCKS * len(LAYERS)} layers"
    assert lora_layer_names(pipe.transformer) == []
    after, expected = weights(pipe), deltas(tensors, 0.7)
    assert after.keys() == before.keys() and set(expected) == set(before)
    for name, delta in expected.items():
        torch.testing.assert_close(after[name], before[name] + delta, rtol=1e-5, atol=1e-6)


def test_several_loras_add_up_at_their_scales_and_separate_layers_give_the_fused_result(tmp_path):
    a, b = lora_tensors(seed=1), lora_tensors(seed=2)
    specs = [LoraSpec(write(tmp_path, "a.safetensors", spelled(a, "comfy")), 0.5),
             LoraSpec(write(tmp_path, "b.safetensors", spelled(b, "musubi")), -1.0)]
    base = fresh()
    plain, before = one_forward(base.transformer), weights(base)
    fused = fresh()
    assert [x.fused for x in load_loras(fused, specs)] == [True, True]
    da, db = deltas(a, 0.5), deltas(b, -1.0)
    for name, weight in weights(fused).items():
        torch.testing.assert_close(weight, before[name] + da[name] + db[name], rtol=1e-5, atol=1e-6)
    separate = fresh()
    applied = load_loras(separate, specs, fuse=False)
    assert [(x.name, x.fused, x.layers) for x in applied] == [("lora_0", False, 24), ("lora_1", False, 24)]
    assert weights(separate) == {} or all(torch.equal(w, before[n]) for n, w in weights(separate).items() if n in before)
    out_fused, out_separate = one_forward(fused.transformer), one_forward(separate.transformer)
    assert (out_fused - plain).abs().max() > 1e-2
    torch.testing.assert_close(out_separate, out_fused, rtol=1e-5, atol=1e-5)
    set_lora_scales(separate, {"lora_0": 0.0, "lora_1": 0.0})  # strength 0: the base model again
    torch.testing.assert_close(one_forward(separate.transformer), plain, rtol=1e-6, atol=1e-6)
    with pytest.raises(InvalidSetting, match=r"^LoRA strength must be between -4 and 4, got 5 for lora_0$"):
        set_lora_scales(separate, {"lora_0": 5.0})


def test_lora_options_parse_files_scales_and_the_environment(tmp_path, monkeypatch):
    assert parse_lora("style.safetensors") == LoraSpec(tmp_path.__class__("style.safetensors"), 1.0)
    assert parse_lora(" /m/loras/style.safetensors:0.8 ").scale == 0.8
    assert parse_lora("/m/odd:name.safetensors").path.name == "odd:name.safetensors"  # no number after ':'
    assert parse_lora("C:/loras/x.safetensors:-0.5").path.as_posix() == "C:/loras/x.safetensors"
    with pytest.raises(InvalidSetting, match=r"^--lora: the scale of x.safetensors must be between -4 and 4, got 9$"):
        parse_lora("x.safetensors:9")
    with pytest.raises(InvalidSetting, match=r"^--lora: give a LoRA file, optionally with :SCALE"):
        parse_lora(":0.5")
    monkeypatch.setenv(LORA_ENV, "a.safetensors:0.5, b.safetensors;c.safetensors:2")
    assert [str(s) for s in loras_from_env()] == ["a.safetensors:0.5", "b.safetensors:1", "c.safetensors:2"]
    assert [str(s) for s in chosen_loras(None)] == ["a.safetensors:0.5", "b.safetensors:1", "c.safetensors:2"]
    assert [str(s) for s in chosen_loras(["d.safetensors:0.25"])] == ["d.safetensors:0.25"]  # the option wins
    monkeypatch.setenv(LORA_ENV, "a.safetensors:x9")
    assert loras_from_env()[0].path.name == "a.safetensors:x9"


def refused(tmp_path, name, state=None, raw=None):
    path = tmp_path / name
    if raw is not None:
        path.write_bytes(raw)
    elif state is not None:
        write(tmp_path, name, state)
    pipe = fresh()
    before = weights(pipe)
    with pytest.raises((CheckpointMismatch, InputFileNotFound)) as error:
        load_loras(pipe, [LoraSpec(path)])
    assert lora_layer_names(pipe.transformer) == []  # never half-applied
    assert all(torch.equal(w, before[n]) for n, w in weights(pipe).items())
    assert "\n" not in str(error.value)
    return str(error.value)


def test_bad_lora_files_are_refused_in_one_line_and_the_dit_is_untouched(tmp_path):
    assert refused(tmp_path, "gone.safetensors") == f"LoRA file not found: {tmp_path / 'gone.safetensors'}"
    assert refused(tmp_path, "junk.safetensors", raw=b"\x00" * 64).startswith(
        "junk.safetensors is not a readable .safetensors LoRA (")
    assert refused(tmp_path, "model.safetensors", {"blocks.0.self_attn.q.weight": torch.zeros(2, 2)}) == (
        "model.safetensors holds no LoRA weights (no lora_A/lora_down keys; first keys: blocks.0.self_attn.q.weight)")
    loha = {"diffusion_model.blocks.0.self_attn.q.hada_w1_a": torch.zeros(2, 2), "x.lora_down.weight": torch.zeros(1)}
    assert refused(tmp_path, "loha.safetensors", loha) == (
        "loha.safetensors is a LyCORIS LoHa/LoKr file; diffusers loads plain LoRAs only")


def test_a_lora_for_another_model_is_refused_naming_what_does_not_fit(tmp_path):
    flux = {"diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight": torch.zeros(4, 24),
            "diffusion_model.double_blocks.0.img_attn.qkv.lora_up.weight": torch.zeros(24, 4)}
    assert refused(tmp_path, "flux_style.safetensors", flux).startswith(
        "flux_style.safetensors is not a Wan2.1 LoRA that diffusers can read (")
    sdxl = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4)}
    assert refused(tmp_path, "sdxl.safetensors", sdxl).startswith(
        "sdxl.safetensors is not a Wan2.1 LoRA that diffusers can read (")
    wider = spelled(lora_tensors(fan_in_change=16), "comfy")  # a Wan of another width (1.3B: 1536, 14B: 5120)
    assert refused(tmp_path, "wan_1.3b_style.safetensors", wider) == (
        "wan_1.3b_style.safetensors was made for a model of another size: 'blocks.0.attn1.to_k' takes 24 inputs here, "
        "the LoRA 40 (a Wan2.1 1.3B or Wan2.2 5B LoRA?)")
    deeper = spelled({(block + 30, layer): v for (block, layer), v in lora_tensors().items()}, "diffusers")
    assert refused(tmp_path, "deep.safetensors", deeper) == (
        "deep.safetensors is a LoRA for another model: none of its 24 layers exist in this Wan2.1 I2V DiT "
        "(e.g. 'blocks.30.attn1.to_k')")
    partly = spelled(lora_tensors(), "diffusers") | spelled({(5, "ffn.0"): lora_tensors()[0, "ffn.0"]}, "diffusers")
    assert refused(tmp_path, "partly.safetensors", partly) == (
        "partly.safetensors is a LoRA for another model: 1 of its 25 layers do not exist in this Wan2.1 I2V DiT "
        "(e.g. 'blocks.5.ffn.net.0.proj')")


def test_loras_loaded_later_keep_the_earlier_ones_active(tmp_path):
    """Separate-layer LoRAs from two calls (the few-step LoRA after the user's) are all active at their scales."""
    a = LoraSpec(write(tmp_path, "a.safetensors", spelled(lora_tensors(seed=1), "comfy")), 0.5)
    b = LoraSpec(write(tmp_path, "b.safetensors", spelled(lora_tensors(seed=2), "bare")), 2.0)
    together, apart = fresh(), fresh()
    load_loras(together, [a, b], fuse=False)
    load_loras(apart, [a], fuse=False)
    [second] = load_loras(apart, [b], fuse=False)
    assert second.name == "lora_1" and apart.lora_scales == {"lora_0": 0.5, "lora_1": 2.0}
    torch.testing.assert_close(one_forward(apart.transformer), one_forward(together.transformer), rtol=0, atol=0)
    with pytest.raises(InvalidSetting, match=r"^no LoRA named 'style' is kept as separate layers \(loaded: lora_0, "
                                             r"lora_1\)$"):
        set_lora_scales(apart, {"style": 1.0})


@pytest.mark.slow
def test_generate_applies_loras_from_the_option_or_the_environment_and_refuses_bad_ones_before_loading(
        tmp_path, capsys, monkeypatch):
    from fantasy.cli import main

    from .conftest import EXAMPLE_IMAGE, EXAMPLE_SPEECH
    from .mp4_probe import probe

    lora = write(tmp_path, "comfy.safetensors", spelled(lora_tensors(), "comfy"))
    out = tmp_path / "o.mp4"
    args = ["generate", "--image", str(EXAMPLE_IMAGE), "--audio", str(EXAMPLE_SPEECH), "--out", str(out),
            "--steps", "1", "--size", "64", "--max-duration", "0.4"]
    monkeypatch.delenv(LORA_ENV, raising=False)
    assert main([*args, "--lora", f"{lora}:0.5", "--lora", str(lora)]) == 0
    err = capsys.readouterr().err
    assert "  LoRA comfy.safetensors:0.5: fused into 24 layers\n  LoRA comfy.safetensors:1: fused into 24 layers" in err
    assert probe(out).frames == 13
    monkeypatch.setenv(LORA_ENV, f"{lora}:0.25")
    out.unlink()
    assert main([*args, "--no-fuse-lora"]) == 0
    assert "  LoRA comfy.safetensors:0.25: kept beside 24 layers" in capsys.readouterr().err
    for bad, message in [(str(tmp_path / "gone.safetensors"), f"LoRA file not found: {tmp_path / 'gone.safetensors'}"),
                         (f"{lora}:7", "--lora: the scale of comfy.safetensors must be between -4 and 4, got 7")]:
        out.unlink(missing_ok=True)
        assert main([*args, "--lora", bad]) == 2
        assert capsys.readouterr().err == f"error: {message}\n"  # one line, before any model loaded ("[tiny] ..." not said)
        assert not out.exists()
    monkeypatch.setenv(LORA_ENV, f"{lora}")
    assert main([*args, "--release"]) == 2
    assert capsys.readouterr().err == "error: --release runs the released model only; drop --lora (and unset FANTASY_LORA)\n"
