"""Speed switches on the tiny pipeline: each gives the plain path's result, exactly or within a stated tolerance.

Switches mutate a pipeline, so tests that apply one build their own (`fresh`, ~0.3 s) or undo it.
"""

import copy

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from fantasy.errors import CheckpointMismatch, InvalidSetting
from fantasy.media.audio import clip_samples
from fantasy.media.image import resize_portrait
from fantasy.speed.switches import SpeedOptions, apply_speed, attention_backend_name, parse_step_cache

from .conftest import EXAMPLE_IMAGE, speech_like

SIZE = 64
BLOCK_PASSES = 2 * 3  # tiny DiT blocks x guidance passes per step


def fresh():
    from fantasy.weights.presets import load_pipeline

    pipe = load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def conditioning(tiny_pipe):
    num_frames = 25  # 1 s at 23 fps: int(23 // 4)*4 + 5 frames -> 7 latent frames
    windows, lengths = tiny_pipe.encode_audio(clip_samples(speech_like(1.0), num_frames, 23), num_frames)
    image = resize_portrait(Image.open(EXAMPLE_IMAGE).convert("RGB"), SIZE)
    return image, windows, lengths, num_frames


def run(pipe, conditioning, steps=2, **kw):
    image, windows, lengths, num_frames = conditioning
    return pipe.denoise(image, windows, lengths, "a person is talking", num_frames=num_frames, num_inference_steps=steps,
                generator=torch.Generator().manual_seed(3), **kw)


def one_forward(transformer, seed=0):
    """One transformer call with audio on (no sampler, no encoders): for the per-layer switches."""
    g = torch.Generator().manual_seed(seed)
    windows, lengths = torch.randn(1, 3, 5, 16, generator=g), torch.tensor([5, 3, 5])
    audio = transformer.blocks[0].attn2.processor.audio  # the context all its processors share
    with torch.no_grad(), audio.use(windows, lengths, 1.0):
        return transformer(
            hidden_states=torch.randn(1, 36, 3, 8, 8, generator=g), timestep=torch.tensor([700.0]),
            encoder_hidden_states=torch.randn(1, 512, 32, generator=g),
            encoder_hidden_states_image=torch.randn(1, 17, 16, generator=g), return_dict=False,
        )[0]


class BlockCounter:
    """Counts blocks that really ran (self-attention calls; a cache-skipped block never reaches it)."""

    def __init__(self, pipe):
        self.count = 0
        self.handles = [b.attn1.register_forward_hook(self._hit) for b in pipe.transformer.blocks]

    def _hit(self, *_):
        self.count += 1

    def close(self):
        for h in self.handles:
            h.remove()


def relative_error(out, ref):
    return ((out - ref).abs().mean() / ref.abs().mean()).item()


# ---- options ----------------------------------------------------------------------------------------


def test_step_cache_spec_parses_and_rejects_clearly():
    assert parse_step_cache("fbc") == ("fbc", 0.05)
    assert parse_step_cache("fbc:0.1") == ("fbc", 0.1)
    for text, message in [("tea", "unknown step cache 'tea'"), ("fbc:x", "must be a number"),
                          ("fbc:2", "between 0 and 1")]:
        with pytest.raises(InvalidSetting, match=message):
            parse_step_cache(text)


def test_attention_names_resolve_and_unusable_ones_say_what_is_needed(tiny_pipe):
    from fantasy.speed.switches import check_attention

    assert attention_backend_name("sdpa") == "native"
    assert attention_backend_name("FLASH3") == "_flash_3"
    assert attention_backend_name("_native_math") == "_native_math"
    with pytest.raises(InvalidSetting, match="unknown attention backend 'fast'.*sdpa"):
        attention_backend_name("fast")
    cpu = torch.device("cpu")
    with pytest.raises(InvalidSetting, match="'flash' cannot be used.*flash-attn"):  # not installed here
        check_attention("flash", cpu)
    with pytest.raises(InvalidSetting, match="'cudnn' .* needs a CUDA GPU"):
        check_attention("cudnn", cpu)


# ---- attention backend ------------------------------------------------------------------------------


def test_attention_backend_reaches_every_processor_and_math_matches_sdpa(tiny_pipe, monkeypatch):
    """Tolerance: _native_math vs native SDPA within 1e-5 (fp32 on CPU)."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    from fantasy.model.adapter import FantasyAudioAttnProcessor
    from fantasy.speed.switches import reset_attention, set_attention

    math = AttentionBackendName._NATIVE_MATH
    calls = []
    real = _AttentionBackendRegistry._backends[math]
    monkeypatch.setitem(_AttentionBackendRegistry._backends, math, lambda **kw: calls.append(1) or real(**kw))
    plain = one_forward(tiny_pipe.transformer)
    assert calls == []
    try:
        assert set_attention(tiny_pipe.transformer, "math") == "_native_math"
        processors = [b.attn2.processor for b in tiny_pipe.transformer.blocks]
        assert all(isinstance(p, FantasyAudioAttnProcessor) and p._attention_backend == math for p in processors)
        out = one_forward(tiny_pipe.transformer)
    finally:
        reset_attention(tiny_pipe.transformer)
    # Per block: self-attention, text and image cross-attention (the audio branch stays on plain SDPA).
    assert len(calls) == 3 * len(tiny_pipe.transformer.blocks)
    torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-5)
    assert _AttentionBackendRegistry.get_active_backend()[0] == AttentionBackendName.NATIVE
    assert all(b.attn1.processor._attention_backend is None for b in tiny_pipe.transformer.blocks)


# ---- step cache -------------------------------------------------------------------------------------


def test_step_cache_threshold_zero_is_exactly_the_plain_path(tiny_pipe, conditioning):
    plain = run(tiny_pipe, conditioning, steps=3)
    pipe = fresh()
    apply_speed(pipe, SpeedOptions(step_cache="fbc", cache_threshold=0.0))
    counter = BlockCounter(pipe)
    cached = run(pipe, conditioning, steps=3)
    counter.close()
    assert counter.count == 3 * BLOCK_PASSES
    assert torch.equal(cached, plain)


def test_step_cache_skips_blocks_within_tolerance(conditioning):
    """Threshold 0.1 over 6 steps: some blocks skipped; mean |error| <= 1.5% of mean |latent| (measured 0.75%)."""
    pipe = fresh()
    plain = run(pipe, conditioning, steps=6)
    apply_speed(pipe, SpeedOptions(step_cache="fbc", cache_threshold=0.1))
    counter = BlockCounter(pipe)
    cached = run(pipe, conditioning, steps=6)
    counter.close()
    assert counter.count < 6 * BLOCK_PASSES
    assert not torch.equal(cached, plain)
    assert relative_error(cached, plain) <= 0.015


def test_cached_residuals_never_mix_guidance_passes(conditioning):
    """With every step after the first served from the cache, each pass's step-2 result must be its own
    block-0 output plus *its own* step-1 tail residual (the audio-on pass never gets an audio-off one)."""
    from diffusers import FirstBlockCacheConfig

    pipe = fresh()
    transformer = pipe.transformer
    seen = {"first": [], "last": [], "final": []}
    hooks = [transformer.blocks[0].register_forward_hook(lambda m, a, kw, out: seen["first"].append(out),
                                                         with_kwargs=True),
             transformer.blocks[-1].register_forward_hook(lambda m, a, kw, out: seen["last"].append(out),
                                                          with_kwargs=True)]
    run(pipe, conditioning, steps=2)  # plain: the oracle's pieces, 3 passes x 2 steps
    first, last = seen["first"], seen["last"]
    seen["first"], seen["last"] = [], []
    hooks.append(transformer.norm_out.register_forward_pre_hook(lambda m, args: seen["final"].append(args[0])))
    transformer.enable_cache(FirstBlockCacheConfig(threshold=1e9))  # never recompute after step 1
    counter = BlockCounter(pipe)
    run(pipe, conditioning, steps=2)
    counter.close()
    for h in hooks:
        h.remove()
    assert counter.count == BLOCK_PASSES + 3  # step 2: block 0 only, in each pass
    for p in range(3):  # full, text, uncond
        expected = first[3 + p] + (last[p] - first[p])
        torch.testing.assert_close(seen["final"][3 + p], expected, rtol=0, atol=1e-6)
    mixed = first[3] + (last[2] - first[2])  # the full pass with the uncond pass's residual
    assert not torch.allclose(seen["final"][3], mixed, atol=1e-3)


def test_each_run_starts_with_an_empty_cache(conditioning):
    """A cache that never refreshes would, without the per-run reset, serve run 2's first step from run 1."""
    from diffusers import FirstBlockCacheConfig

    pipe = fresh()
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=1e9))
    first = run(pipe, conditioning)
    counter = BlockCounter(pipe)
    second = run(pipe, conditioning)
    counter.close()
    assert counter.count == BLOCK_PASSES + 3
    assert torch.equal(first, second)


# ---- fp8 linears ------------------------------------------------------------------------------------


def test_fp8_linears_need_a_capable_gpu_and_nothing_changes_before_the_error(tiny_pipe):
    with pytest.raises(InvalidSetting, match=r"fp8 linears need .*compute capability >= 8.9"):
        apply_speed(tiny_pipe, SpeedOptions(attention="math", fp8_linears=True))
    assert all(b.attn1.processor._attention_backend is None for b in tiny_pipe.transformer.blocks)


def test_fp8_picks_the_block_linears_only_weight_only_fp8_within_tolerance(tiny_pipe):
    """The dynamic-activation fp8 config refuses to run without a cc >= 8.9 GPU, so on CPU the same
    layer selection is checked with torchao's fp8 weight-only config: mean |error| <= 5% (measured 2.88%)."""
    from torchao.quantization import Float8WeightOnlyConfig

    from fantasy.weights.quantize import is_quantized_weight, quantize_block_linears

    plain = one_forward(tiny_pipe.transformer)
    transformer = copy.deepcopy(tiny_pipe.transformer)  # with its own audio context
    chosen = quantize_block_linears(transformer, Float8WeightOnlyConfig())
    per_block = ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                 "attn2.to_v", "attn2.to_out.0", "attn2.add_k_proj", "attn2.add_v_proj", "ffn.net.0.proj", "ffn.net.2"]
    assert chosen == [f"blocks.{i}.{name}" for i in range(2) for name in per_block]
    weights = dict(transformer.named_parameters())
    assert all(is_quantized_weight(weights[f"{name}.weight"]) for name in chosen)
    untouched = [n for n in weights if ".processor." in n or not n.startswith("blocks.")]
    assert untouched and not any(is_quantized_weight(weights[n]) for n in untouched)
    out = one_forward(transformer)
    assert not torch.equal(out, plain)
    assert relative_error(out, plain) <= 0.05


# ---- few-step distilled LoRA ------------------------------------------------------------------------

TINY_DIM, TINY_FFN, RANK = 24, 32, 4


def write_lightx2v_lora(path, seed=0, zero_up=False):
    """A LoRA with lightx2v's key names (original Wan names, lora_down/lora_up/alpha) for the tiny DiT."""
    g = torch.Generator().manual_seed(seed)
    shapes = {f"{attn}.{p}": (TINY_DIM, TINY_DIM) for attn, ps in
              [("self_attn", "q k v o"), ("cross_attn", "q k v o k_img v_img")] for p in ps.split()}
    shapes |= {"ffn.0": (TINY_DIM, TINY_FFN), "ffn.2": (TINY_FFN, TINY_DIM)}  # (in, out)
    state = {}
    for block in range(2):
        for name, (fan_in, fan_out) in shapes.items():
            key = f"diffusion_model.blocks.{block}.{name}"
            state[f"{key}.lora_down.weight"] = torch.randn(RANK, fan_in, generator=g) * 0.3
            up = torch.randn(fan_out, RANK, generator=g) * 0.3
            state[f"{key}.lora_up.weight"] = up.zero_() if zero_up else up
            state[f"{key}.alpha"] = torch.tensor(float(RANK))
    save_file(state, str(path))
    return path


def adapter_weights(pipe):
    return {n: p.detach().clone() for n, p in pipe.transformer.named_parameters() if ".processor." in n}


@pytest.mark.parametrize("fuse", [True, False])
def test_zero_lora_leaves_the_output_unchanged(tiny_pipe, conditioning, tmp_path, fuse):
    from fantasy.speed.distill import load_distilled_lora

    plain = run(tiny_pipe, conditioning)
    pipe = fresh()
    assert load_distilled_lora(pipe, write_lightx2v_lora(tmp_path / "zero.safetensors", zero_up=True),
                               fuse=fuse) is fuse
    assert torch.equal(run(pipe, conditioning), plain)


def test_lora_changes_the_dit_never_the_audio_adapter_and_fusing_keeps_the_result(tiny_pipe, tmp_path):
    """Fused vs separate LoRA layers: within 1e-5."""
    from fantasy.speed.distill import load_distilled_lora, lora_layer_names

    path = write_lightx2v_lora(tmp_path / "lora.safetensors")
    plain = one_forward(tiny_pipe.transformer)
    before = adapter_weights(tiny_pipe)
    separate, fused = fresh(), fresh()
    assert load_distilled_lora(separate, path, fuse=False) is False
    wrapped = lora_layer_names(separate.transformer)
    assert len(wrapped) == 2 * 12 and not any(".processor" in n for n in wrapped)
    assert load_distilled_lora(fused, path, fuse=True) is True
    assert lora_layer_names(fused.transformer) == []  # folded into the weights, layers dropped
    for pipe in (separate, fused):
        after = adapter_weights(pipe)
        assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    out_separate, out_fused = one_forward(separate.transformer), one_forward(fused.transformer)
    assert (out_separate - plain).abs().max() > 1e-2
    torch.testing.assert_close(out_fused, out_separate, rtol=1e-5, atol=1e-5)


def test_a_file_without_wan_lora_keys_is_a_clear_error(tmp_path):
    from fantasy.speed.distill import load_distilled_lora

    path = tmp_path / "other.safetensors"
    save_file({"unet.down.0.lora_down.weight": torch.zeros(4, 8)}, str(path))
    with pytest.raises(CheckpointMismatch, match="other.safetensors"):
        load_distilled_lora(fresh(), path)


def test_distilled_sampler_uses_lightx2v_timesteps_and_renoises():
    from fantasy.model.sampling import make_scheduler, set_official_timesteps

    scheduler = make_scheduler(stochastic=True)
    timesteps = set_official_timesteps(scheduler, 4)
    # lightx2v: [1000, 750, 500, 250] of the 1000-step schedule shifted by 5: 1000 * 5s / (1 + 4s).
    torch.testing.assert_close(timesteps, torch.tensor([1000.0, 937.5, 2500 / 3, 625.0]))
    x, v = torch.randn(1, 4, generator=torch.Generator().manual_seed(0)), torch.ones(1, 4)
    out = scheduler.step(v, timesteps[0], x, generator=torch.Generator().manual_seed(1), return_dict=False)[0]
    noise = torch.randn(1, 4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, (1 - 0.9375) * (x - 1.0 * v) + 0.9375 * noise)


@pytest.mark.slow
@pytest.mark.parametrize("audio_guidance, passes", [(1.0, 1), (2.0, 2)])
def test_few_step_mode_runs_4_steps_of_1_pass(tmp_path, audio_guidance, passes):
    from fantasy.generation import Settings, generate
    from fantasy.speed.distill import FEW_STEP_TEXT_GUIDANCE, FEW_STEPS
    from fantasy.weights.presets import get_preset

    from .conftest import EXAMPLE_SPEECH

    pipe = fresh()
    apply_speed(pipe, SpeedOptions(distilled_lora=write_lightx2v_lora(tmp_path / "l.safetensors")))
    assert pipe.scheduler.config.stochastic_sampling
    calls = []
    forward = pipe.transformer.forward
    pipe.transformer.forward = lambda *a, **kw: calls.append(1) or forward(*a, **kw)
    settings = Settings(steps=FEW_STEPS, text_guidance=FEW_STEP_TEXT_GUIDANCE, audio_guidance=audio_guidance,
                        longest_edge=SIZE, max_duration=1.0)
    result = generate(pipe, EXAMPLE_IMAGE, EXAMPLE_SPEECH, tmp_path / "o.mp4", settings, get_preset("tiny"))
    assert result.passes_per_step == passes and result.windows == 1
    assert len(calls) == 4 * passes


# ---- regional compile -------------------------------------------------------------------------------


@pytest.mark.slow
def test_compiled_blocks_match_the_plain_path(tiny_pipe, conditioning):
    """compile_repeated_blocks(fullgraph=True) traces our audio processor too; within 1e-5, both guidance modes."""
    plain = run(tiny_pipe, conditioning)
    tiny_pipe.batch_guidance = True
    try:
        plain_batched = run(tiny_pipe, conditioning)
    finally:
        tiny_pipe.batch_guidance = False
    pipe = fresh()
    apply_speed(pipe, SpeedOptions(compile=True))
    torch.testing.assert_close(run(pipe, conditioning), plain, rtol=1e-5, atol=1e-5)
    pipe.batch_guidance = True
    torch.testing.assert_close(run(pipe, conditioning), plain_batched, rtol=1e-5, atol=1e-5)


# ---- command line -----------------------------------------------------------------------------------


def cli_generate(tmp_path, *flags):
    from fantasy.cli import main

    from .conftest import EXAMPLE_SPEECH

    return main(["generate", "--image", str(EXAMPLE_IMAGE), "--audio", str(EXAMPLE_SPEECH), "--out",
                 str(tmp_path / "o.mp4"), "--size", "64", "--max-duration", "1", *flags])


@pytest.mark.slow
def test_cli_fast_mode_defaults_to_4_steps_of_1_pass(tmp_path, capsys):
    lora = write_lightx2v_lora(tmp_path / "lightx2v.safetensors")
    assert cli_generate(tmp_path, "--fast", str(lora), "--step-cache", "fbc:0") == 0
    out, err = capsys.readouterr()
    assert "4 steps x 1 passes" in out
    assert "speed: few-step LoRA lightx2v.safetensors (fused), stochastic sampler" in err
    assert "speed: step cache: fbc, threshold 0" in err
    assert cli_generate(tmp_path, "--fast", str(lora), "--steps", "2", "--audio-guidance", "3") == 0
    assert "2 steps x 2 passes" in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--step-cache", "tea"], "unknown step cache 'tea'"),
    (["--attention", "fastest"], "unknown attention backend 'fastest'"),
    (["--fast", "missing.safetensors"], "LoRA file not found: missing.safetensors"),
    (["--attention", "cudnn"], "needs a CUDA GPU"),
    (["--fp8-linears"], "fp8 linears need"),
])
def test_cli_speed_errors_exit_2_with_one_line(tmp_path, capsys, flags, message):
    assert cli_generate(tmp_path, *flags) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o.mp4").exists()


# ---- the paper's modules under the fast paths ---------------------------------------------------------


def with_trained_modules(pipe):
    """Install the motion and identity modules with random (non-zero) weights, as a training run leaves them."""
    from fantasy.model.identity import install_identity_module
    from fantasy.model.motion import install_motion_module
    from fantasy.weights.tiny import CLIP_HIDDEN

    pipe.motion_context = install_motion_module(pipe.transformer)
    pipe.identity_context = install_identity_module(pipe.transformer, CLIP_HIDDEN)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        modules = [pipe.transformer.motion_intensity] + [b.attn2.processor.identity for b in pipe.transformer.blocks]
        for module in modules:
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return pipe


FACE = Image.new("RGB", (32, 32), (190, 140, 120))


def test_step_cache_at_zero_and_batched_guidance_keep_the_trained_modules_exact(conditioning):
    pipe = with_trained_modules(fresh())
    plain = run(pipe, conditioning, steps=3, motion=(0.8, 0.2), face_image=FACE)
    assert not torch.equal(plain, run(pipe, conditioning, steps=3, motion=(0.2, 0.8), face_image=FACE))
    pipe.batch_guidance = True
    torch.testing.assert_close(run(pipe, conditioning, steps=3, motion=(0.8, 0.2), face_image=FACE), plain,
                               rtol=1e-5, atol=1e-5)
    pipe.batch_guidance = False
    apply_speed(pipe, SpeedOptions(step_cache="fbc", cache_threshold=0.0))
    assert torch.equal(run(pipe, conditioning, steps=3, motion=(0.8, 0.2), face_image=FACE), plain)


@pytest.mark.slow
def test_compiled_blocks_keep_the_trained_modules(conditioning):
    """The identity branch (inside the compiled blocks) and the motion hook (outside) survive compilation."""
    pipe = with_trained_modules(fresh())
    plain = run(pipe, conditioning, motion=(0.7, 0.4), face_image=FACE)
    apply_speed(pipe, SpeedOptions(compile=True))
    torch.testing.assert_close(run(pipe, conditioning, motion=(0.7, 0.4), face_image=FACE), plain, rtol=1e-5, atol=1e-5)
