"""The DiT's precision policy (`fantasy.model.precision`) with a bf16 DiT: where fp32 is kept, that it is the
release's arithmetic, and that it works with every storage mode, offloading, compile, the step cache,
outer hooks (context parallelism's kind), deep copies and the trained modules. Plus fp32 latents."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel
from diffusers.hooks import HookRegistry, ModelHook
from PIL import Image

from fantasy.model.precision import apply_precision, precision_of
from fantasy.weights.presets import load_pipeline
from fantasy.weights.quantize import is_quantized_weight
from fantasy.weights.tiny import tiny_transformer

from .fake_weights import IMAGE_DIM, build_weights_dir
from .release_oracle import ReleaseDiT
from .release_oracle import sinusoid as release_sinusoid

BF16 = torch.bfloat16


def bf16_transformer(layers: int = 2, precision: str = "mixed", dtype: torch.dtype = BF16) -> WanTransformer3DModel:
    """The tiny DiT (same weights for the same `layers`) with the audio adapter, in `dtype` with diffusers'
    fp32 modules kept fp32, as the real loader leaves a bf16 DiT."""
    from fantasy.model.adapter import install_audio_adapter
    from fantasy.weights.quantize import keep_fp32_modules_in_fp32

    config = {k: v for k, v in tiny_transformer().config.items() if not k.startswith("_")}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = WanTransformer3DModel(**(config | {"num_layers": layers})).eval()
    if dtype != torch.float32:
        keep_fp32_modules_in_fp32(model.to(dtype))
    install_audio_adapter(model, 16, 17)
    for block in model.blocks:
        block.attn2.processor.to(dtype)
    apply_precision(model, precision)
    return model


def inputs(dtype=BF16, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(1, 36, 3, 8, 8, generator=g).to(dtype), "timestep": torch.tensor([937.5]),
        "encoder_hidden_states": torch.randn(1, 512, 32, generator=g).to(dtype),
        "encoder_hidden_states_image": torch.randn(1, 17, 16, generator=g).to(dtype),
    }


def forward(model, x=None) -> torch.Tensor:
    with torch.no_grad():
        return model(**(x or inputs()), return_dict=False)[0]


class Dtypes:
    """Records the dtype of what each watched module receives (after the policy's casts) and returns."""

    def __init__(self, model):
        self.seen: dict[str, list[torch.dtype]] = {}
        watched = {"block": [b for b in model.blocks], "attn1": [b.attn1 for b in model.blocks],
                   "attn2": [b.attn2 for b in model.blocks], "ffn": [b.ffn for b in model.blocks]}
        self.handles = [m.register_forward_pre_hook(self._input(name)) for name, ms in watched.items() for m in ms]
        self.handles.append(model.condition_embedder.register_forward_hook(self._embedder))
        self.handles.append(model.proj_out.register_forward_hook(lambda m, a, out: self._add("proj_out", out)))

    def _add(self, name, tensor):
        self.seen.setdefault(name, []).append(tensor.dtype)

    def _input(self, name):
        return lambda module, args: self._add(name, args[0])

    def _embedder(self, module, args, outputs):
        for name, tensor in zip(("temb", "timestep_proj", "text", "image"), outputs, strict=True):
            self._add(name, tensor)

    def close(self):
        for handle in self.handles:
            handle.remove()


def test_mixed_keeps_embedding_stream_and_head_fp32_and_matmuls_bf16():
    model = bf16_transformer()
    watch = Dtypes(model)
    out = forward(model)
    watch.close()
    assert out.dtype == torch.float32
    assert set(watch.seen["block"]) == {torch.float32}  # block 0 receives the bf16 patch embedding, lifted
    assert {name: set(watch.seen[name]) for name in ("attn1", "attn2", "ffn", "text", "image")} == {
        name: {BF16} for name in ("attn1", "attn2", "ffn", "text", "image")}
    assert set(watch.seen["temb"]) == set(watch.seen["timestep_proj"]) == set(watch.seen["proj_out"]) == {torch.float32}

    apply_precision(model, "stock")
    watch = Dtypes(model)
    out = forward(model)
    watch.close()
    assert out.dtype == BF16 and set(watch.seen["block"]) == set(watch.seen["timestep_proj"]) == {BF16}


def test_a_bf16_dit_keeps_ropes_tables_in_fp32():
    """RoPE's cos/sin tables are buffers: a bf16 cast rounds them (up to 2e-3) and casting back cannot undo it, so
    they are rebuilt in fp32, as diffusers' `from_pretrained` keeps them (the release computes RoPE in fp64)."""
    fp32 = tiny_transformer()
    model = bf16_transformer()
    for name in ("freqs_cos", "freqs_sin"):
        kept = getattr(model.rope, name)
        assert kept.dtype == torch.float32 and torch.equal(kept, getattr(fp32.rope, name))
    rounded = fp32.rope.freqs_cos.to(BF16).float()
    assert (rounded - fp32.rope.freqs_cos).abs().max() > 1e-3  # what the cast alone left


def test_a_block_computes_the_release_residual_stream():
    """With the policy, block output == the release's `x + y*e[2]`, `x + cross`, `x + ffn*e[5]` in fp32 around
    bf16 attention/FFN calls (wan_video_dit.py WanAttentionBlock), bit for bit."""
    model = bf16_transformer()
    block = model.blocks[0]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 48, 24, generator=g)  # the fp32 stream
    context = torch.randn(1, 529, 24, generator=g).to(BF16)
    temb = torch.randn(1, 6, 24, generator=g)  # fp32 timestep_proj
    rotary = model.rope(torch.zeros(1, 36, 3, 8, 8))
    with torch.no_grad():
        ours = block(x, context, temb, rotary)
        e = (block.scale_shift_table + temb).chunk(6, dim=1)
        y = block.attn1((block.norm1(x) * (1 + e[1]) + e[0]).to(BF16), None, None, rotary)
        x1 = x + y * e[2]
        x2 = x1 + block.attn2(block.norm2(x1).to(BF16), context, None, None)
        y = block.ffn((block.norm3(x2) * (1 + e[4]) + e[3]).to(BF16))
        release = x2 + y * e[5]
    assert ours.dtype == torch.float32 and torch.equal(ours, release)


def test_switching_is_exact_both_ways():
    mixed = forward(bf16_transformer())
    model = bf16_transformer(precision="stock")
    plain = copy.deepcopy(model)  # no policy hooks: a plain diffusers model
    assert precision_of(model) == "stock" and torch.equal(forward(model), forward(plain))
    apply_precision(model, "mixed")
    apply_precision(model, "mixed")  # idempotent
    assert precision_of(model) == "mixed" and torch.equal(forward(model), mixed)
    apply_precision(model, "stock")
    assert torch.equal(forward(model), forward(plain))


def release_forward(model, x: dict, bf16: bool = False) -> torch.Tensor:
    """The release's `WanModel.forward` over the model's weights (tests/release_oracle.py: written from the
    release, it imports nothing of `fantasy`): a reference that shares no code with the policy under test. A
    reference computed through the policy passed a swapped sin/cos in its timestep sinusoid (issue 25).
    `bf16`: the release's own bf16 computation (autocast), else fp32 throughout."""
    h = x["hidden_states"].float()
    frames = h.shape[2]  # audio is off (scale 0) as in `forward`: zero windows of one token per latent frame
    with torch.no_grad():
        return ReleaseDiT(model, bf16=bf16)(h[:, :16], h[:, 16:], x["timestep"], x["encoder_hidden_states"].float(),
                                            x["encoder_hidden_states_image"].float(), torch.zeros(1, frames, 1, 16),
                                            torch.ones(frames, dtype=torch.long), 0.0)


def test_the_policy_in_fp32_is_the_releases_fp32_forward():
    model = bf16_transformer(dtype=torch.float32)
    x = inputs(torch.float32)
    torch.testing.assert_close(forward(model, x), release_forward(model, x), rtol=0, atol=2e-6)


@pytest.mark.parametrize("dtype", [torch.float32, BF16])
def test_the_time_embedding_is_the_releases(dtype):
    """`e` and `e0` (temb, timestep_proj) as the release computes them: the sinusoid [cos, sin] in float64, both
    MLPs in fp32 from the stored weights, whatever the DiT's dtype."""
    model = bf16_transformer(dtype=dtype)
    weights = {k: v.float() for k, v in model.condition_embedder.state_dict().items()}
    timestep = torch.tensor([937.5, 3.0])
    with torch.no_grad():
        temb, projected, _, _ = model.condition_embedder(timestep, torch.zeros(2, 512, 32, dtype=dtype))
    e = F.linear(release_sinusoid(256, timestep).float(), weights["time_embedder.linear_1.weight"],
                 weights["time_embedder.linear_1.bias"])
    e = F.linear(F.silu(e), weights["time_embedder.linear_2.weight"], weights["time_embedder.linear_2.bias"])
    e0 = F.linear(F.silu(e), weights["time_proj.weight"], weights["time_proj.bias"])
    assert temb.dtype == projected.dtype == torch.float32
    torch.testing.assert_close(temb, e, rtol=0, atol=1e-6)
    torch.testing.assert_close(projected, e0, rtol=0, atol=1e-6)


def test_mixed_is_closer_to_fp32_than_stock_on_one_forward():
    """Against the release's fp32 forward over the same (bf16) weights: only the arithmetic differs."""
    model = bf16_transformer()
    reference = release_forward(model, inputs())
    err = {p: (forward(bf16_transformer(precision=p)).float() - reference).abs().mean().item() for p in ("mixed", "stock")}
    assert err["mixed"] < err["stock"]


def test_mixed_is_closer_to_the_releases_bf16_forward_than_stock():
    model = bf16_transformer()
    release_bf16 = release_forward(model, inputs(), bf16=True)
    err = {p: (forward(bf16_transformer(precision=p)).float() - release_bf16).abs().mean().item()
           for p in ("mixed", "stock")}
    assert err["mixed"] < err["stock"]


@pytest.mark.slow
def test_compiled_blocks_share_one_graph_with_the_policy():
    """The casts are shared torch pre-hooks: 10 blocks trace to the same graph (a per-block wrapper would hit
    dynamo's recompile limit of 8 with fullgraph=True); the eager backend keeps the output bit for bit."""
    from torch._dynamo.utils import counters

    model = bf16_transformer(layers=10)
    eager = forward(model)
    torch._dynamo.reset()
    counters.clear()
    model.compile_repeated_blocks(fullgraph=True, backend="eager")
    try:
        assert torch.equal(forward(model), eager)
        assert counters["stats"]["unique_graphs"] <= 3  # block 0 (bf16 input), the others, maybe a guard variant
    finally:
        torch._dynamo.reset()


def test_outer_hooks_wrap_the_policy_and_late_policy_is_refused():
    """Context parallelism adds diffusers hooks after loading (split at blocks.0, gather at proj_out): they
    must see the fp32 stream and the fp32 head output. Installing the policy under such hooks is refused."""
    model = bf16_transformer()
    expected = forward(model)
    seen = {}

    class Record(ModelHook):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def pre_forward(self, module, *args, **kwargs):
            seen[self.name + " in"] = args[0].dtype
            return args, kwargs

        def post_forward(self, module, output):
            seen[self.name + " out"] = output.dtype
            return output * 2 if self.name == "proj_out" else output

    HookRegistry.check_if_exists_or_initialize(model.blocks[0]).register_hook(Record("block0"), "record")
    HookRegistry.check_if_exists_or_initialize(model.proj_out).register_hook(Record("proj_out"), "record")
    assert torch.equal(forward(model), expected * 2)
    assert seen == {"block0 in": torch.float32, "block0 out": torch.float32, "proj_out in": torch.float32,
                    "proj_out out": torch.float32}
    apply_precision(model, "stock")
    with pytest.raises(RuntimeError, match=r"set the precision before other hooks are added \(record found\)"):
        apply_precision(model, "mixed")


def test_deep_copies_compute_with_their_own_weights():
    model = bf16_transformer()
    expected = forward(model)
    twin = copy.deepcopy(model)
    assert precision_of(twin) == "mixed" and torch.equal(forward(twin), expected)
    with torch.no_grad():
        twin.blocks[0].ffn.net[2].weight.mul_(0)
        twin.proj_out.bias.add_(1.0)
    changed = forward(twin)
    assert torch.equal(forward(model), expected)  # the original is untouched and still hooked
    assert not torch.allclose(changed, expected, atol=0.5)
    model.enable_cache(__import__("diffusers").FirstBlockCacheConfig(threshold=0.05))
    with pytest.raises(RuntimeError, match="cannot deep-copy a transformer with diffusers hooks"):
        copy.deepcopy(model)


def test_trained_modules_under_the_policy():
    from fantasy.model.identity import install_identity_module
    from fantasy.model.motion import install_motion_module

    model = bf16_transformer()
    expected = forward(model)
    motion = install_motion_module(model)
    identity = install_identity_module(model, 16)
    face = torch.randn(1, 17, 16, generator=torch.Generator().manual_seed(4)).to(BF16)
    with motion.use((0.9, 0.2)), identity.use(face, 1.0):
        assert torch.equal(forward(model), expected)  # zero-initialised: inert, also in mixed precision
        with torch.no_grad():
            motion.model.mlp[-1].bias.fill_(0.01)
        watch = Dtypes(model)
        moved = forward(model)
        watch.close()
    assert set(watch.seen["timestep_proj"]) == {torch.float32} and not torch.equal(moved, expected)


# ---- whole pipelines -------------------------------------------------------------------------------


def conditioning(pipe):
    g = torch.Generator().manual_seed(5)
    return dict(image=Image.new("RGB", (32, 32), (180, 120, 90)), audio_windows=torch.randn(1, 2, 5, 16, generator=g),
                audio_lengths=torch.tensor([3, 5]), prompt="a person is talking", num_frames=5,
                num_inference_steps=2, generator=torch.Generator().manual_seed(3))


@pytest.mark.slow
def test_latents_and_guidance_are_fp32_with_a_stock_bf16_dit():
    pipe = load_pipeline("tiny", dtype=BF16)
    apply_precision(pipe.transformer, "stock")
    pipe.set_progress_bar_config(disable=True)
    outputs, velocities = [], []
    original_forward, original_step = pipe.transformer.forward, pipe.scheduler.step

    def recording_forward(*args, **kwargs):
        out = original_forward(*args, **kwargs)
        outputs.append(out[0])
        return out

    def recording_step(velocity, t, latents, **kwargs):
        velocities.append((velocity, latents.dtype))
        return original_step(velocity, t, latents, **kwargs)

    pipe.transformer.forward, pipe.scheduler.step = recording_forward, recording_step
    latents = pipe.denoise(**conditioning(pipe), text_guidance_scale=5.0, audio_guidance_scale=4.0)
    assert latents.dtype == torch.float32
    assert {o.dtype for o in outputs} == {BF16}  # stock precision: the DiT returns bf16
    full, text, uncond = (o.float() for o in outputs[3:6])  # step 2's passes, combined in fp32
    assert velocities[1][0].dtype == torch.float32 and velocities[1][1] == torch.float32
    assert torch.equal(velocities[1][0], uncond + 5.0 * (text - uncond) + 4.0 * (full - text))
    assert pipe.audio_proj.proj.weight.dtype == torch.float32  # the audio projection stays fp32


@pytest.mark.slow
def test_step_cache_with_the_policy_in_bf16():
    from fantasy.speed.switches import SpeedOptions, apply_speed

    plain_pipe = load_pipeline("tiny", dtype=BF16)
    plain_pipe.set_progress_bar_config(disable=True)
    plain = plain_pipe.denoise(**conditioning(plain_pipe))
    cached = load_pipeline("tiny", dtype=BF16)
    cached.set_progress_bar_config(disable=True)
    apply_speed(cached, SpeedOptions(step_cache="fbc", cache_threshold=0.0))
    assert precision_of(cached.transformer) == "mixed"
    assert torch.equal(cached.denoise(**conditioning(cached)), plain)  # threshold 0: every block computed


# Nothing may come from this machine's Hugging Face cache (fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("empty_hf_cache")


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """Real-layout tiny weights loaded in bf16 (the real preset's dtype), by (dit, vram)."""
    root = tmp_path_factory.mktemp("weights")
    build_weights_dir(root)
    cache = {}

    def get(dit: str, vram: str = "resident"):
        if (dit, vram) not in cache:
            cache[dit, vram] = load_pipeline("real", device="cpu", weights=root, dit=dit, vram=vram,
                                             allow_cpu=True, dtype=BF16)
        return cache[dit, vram]

    return get


def dit_inputs() -> dict:
    g = torch.Generator().manual_seed(11)
    return {"hidden_states": torch.randn(1, 36, 3, 4, 4, generator=g).to(BF16), "timestep": torch.tensor([500.0]),
            "encoder_hidden_states": torch.randn(1, 512, 32, generator=g).to(BF16),
            "encoder_hidden_states_image": torch.randn(1, 17, IMAGE_DIM, generator=g).to(BF16)}


@pytest.mark.slow
@pytest.mark.parametrize("dit, tolerance", [("bf16", 0.0), ("q8_0", 0.03), ("bf16-int8", 0.03), ("bf16-fp8", 0.1),
                                            ("bf16-fp8-storage", 0.1)])
def test_every_dit_mode_runs_in_mixed_precision(real, dit, tolerance):
    """fp32 output from every storage; the fp32 linears read quantized weights (GGUF, torchao) themselves.
    Tolerance: max |out - bf16 file| / max |bf16 file| (the storage's own rounding, as in test_real_loading)."""
    transformer = real(dit).transformer
    assert precision_of(transformer) == "mixed"
    out = forward(transformer, dit_inputs())
    reference = forward(real("bf16").transformer, dit_inputs())
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert ((out - reference).abs().max() / reference.abs().max()).item() <= tolerance
    if dit in ("q8_0", "bf16-int8", "bf16-fp8"):
        assert is_quantized_weight(transformer.condition_embedder.time_proj.weight)
    assert real(dit).audio_proj.proj.weight.dtype == torch.float32


@pytest.mark.slow
@pytest.mark.parametrize("vram", ["model-offload", "group-offload"])
def test_offloading_gives_the_resident_result_in_mixed_precision(real, vram):
    resident, offloaded = real("q8_0"), real("q8_0", vram)
    a = resident.denoise(**conditioning(resident))
    b = offloaded.denoise(**conditioning(offloaded))
    assert a.dtype == torch.float32 and torch.equal(a, b)


def test_large_fp32_linears_are_upcast_in_row_chunks_with_the_same_result():
    import torch.nn.functional as F

    from fantasy.model.precision import CHUNK_ROWS, Fp32Linear

    linear = torch.nn.Linear(64, 2 * CHUNK_ROWS + 7).to(BF16)
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(0)).to(BF16)
    expected = F.linear(x.float(), linear.weight.float(), linear.bias.float())
    HookRegistry.check_if_exists_or_initialize(linear).register_hook(Fp32Linear(), "fp32")
    seen = []
    original = torch.Tensor.to

    def watch(tensor, *args, **kwargs):
        out = original(tensor, *args, **kwargs)
        if out.dtype == torch.float32 and out.dim() == 2 and out.shape[1] == 64:
            seen.append(out.shape[0])
        return out

    torch.Tensor.to = watch
    try:
        out = linear(x)
    finally:
        torch.Tensor.to = original
    assert out.dtype == torch.float32 and torch.equal(out, expected)
    assert seen == [CHUNK_ROWS, CHUNK_ROWS, 7]  # never the whole weight in fp32 at once


@pytest.mark.slow
def test_precision_bench_dry_run():
    """tools/precision.py's measurement on the tiny config (the CPU figures in docs/numerics.md come from its real run)."""
    from fantasy.bench.models import TINY
    from tools.precision import measure

    rows = [measure(mode, TINY, torch.device("cpu"), (64, 64), 9, 1) for mode in ("mixed", "stock")]
    assert [(r["mode"], r["output_dtype"], r["tokens"]) for r in rows] == [("mixed", "float32", 48),
                                                                           ("stock", "bfloat16", 48)]
    # In this (long-lived) process ru_maxrss is an old peak, so the memory figure only means something in the
    # fresh process per policy that the bench's main starts; here only its presence is checked.
    assert all(r["seconds"] > 0 and r["cpu_seconds"] > 0 and isinstance(r["activation_gib"], float) for r in rows)


# ---- the policy's small parts, one by one (mutation testing found them unchecked) ---------------------------


def test_the_compute_dtype_is_the_layerwise_castings_or_the_layers_own_or_the_weights():
    """One block only (a real-width test's DiT), so block 0 is the only block to read it from."""
    from fantasy.model.precision import compute_dtype_of

    model = bf16_transformer(layers=1, precision="stock")
    assert compute_dtype_of(model) == BF16 and precision_of(model) == "stock"
    model.blocks[0].attn1.to_q.compute_dtype = torch.float16  # a GGUF layer names its compute dtype
    assert compute_dtype_of(model) == torch.float16
    stored = bf16_transformer(layers=1, precision="stock")
    stored.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float16)
    assert stored.blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
    assert compute_dtype_of(stored) == torch.float16


def test_the_hidden_states_cast_takes_the_first_argument_or_the_keyword_and_nothing_else():
    from fantasy.model.precision import cast_to

    cast = cast_to(torch.float16)
    assert cast_to(torch.float16) is cast  # one shared hook per dtype (compiled blocks share one graph)
    x, other = torch.ones(2, dtype=torch.float32), torch.ones(2, dtype=torch.float32)
    args, kwargs = cast(None, (x, other), {"temb": other})
    assert args[0].dtype == torch.float16 and args[1] is other and kwargs == {"temb": other}
    args, kwargs = cast(None, (), {"hidden_states": x, "temb": other})
    assert args == () and kwargs["hidden_states"].dtype == torch.float16 and kwargs["temb"] is other
    assert cast(None, (), {"temb": other}) is None


@pytest.mark.parametrize("attribute, value", [("flip_sin_to_cos", False), ("downscale_freq_shift", 1.0),
                                              ("scale", 2.0)])
def test_a_timestep_sinusoid_other_than_wans_is_refused(attribute, value):
    model = bf16_transformer(layers=1, precision="stock")
    setattr(model.condition_embedder.timesteps_proj, attribute, value)
    with pytest.raises(ValueError, match=r"^the mixed precision policy expects Wan's timestep sinusoid \(cos first, "
                                         r"no shift\)$"):
        apply_precision(model, "mixed")


def test_an_unknown_precision_is_refused_by_name():
    from fantasy.errors import InvalidSetting

    with pytest.raises(InvalidSetting, match=r"^unknown precision 'half'; choose one of mixed, stock$"):
        apply_precision(bf16_transformer(layers=1, precision="stock"), "half")


def test_the_casts_run_before_earlier_pre_hooks_and_leave_nothing_when_removed():
    """The policy's casts are prepended: a torch pre-hook registered before it sees the cast input."""
    model = bf16_transformer(layers=1, precision="stock")
    seen = []
    model.blocks[0].attn1.register_forward_pre_hook(lambda module, args, kwargs: seen.append(
        (args[0] if args else kwargs["hidden_states"]).dtype), with_kwargs=True)
    apply_precision(model, "mixed")
    forward(model)
    assert seen == [BF16]  # the fp32 stream, rounded to the compute dtype before the recorder
    apply_precision(model, "stock")
    for module in (model.blocks[0], model.blocks[0].attn1, model.blocks[0].attn2, model.blocks[0].ffn):
        assert set(module._forward_pre_hooks_with_kwargs) == set(module._forward_pre_hooks)  # no stale entries
    assert len(model.blocks[0]._forward_pre_hooks) == 0 and len(model.blocks[0].attn1._forward_pre_hooks) == 1


def test_a_deep_copy_keeps_the_compute_dtype_it_was_given():
    model = bf16_transformer(layers=1, precision="stock")
    apply_precision(model, "mixed", compute_dtype=torch.float16)  # not the weights' bf16
    twin = copy.deepcopy(model)
    for transformer in (model, twin):
        dtypes = {hook.dtype for hook in transformer.blocks[0].attn1._forward_pre_hooks.values()}
        assert dtypes == {torch.float16}, dtypes


def test_hooks_that_block_the_policy_or_a_copy_are_named():
    class Nothing(ModelHook):
        pass

    model = bf16_transformer(layers=1, precision="stock")
    registry = HookRegistry.check_if_exists_or_initialize(model.proj_out)
    registry.register_hook(Nothing(), "first")
    registry.register_hook(Nothing(), "second")
    with pytest.raises(RuntimeError, match=r"^set the precision before other hooks are added \(first, second found\): "
                                           r"offloading, caching and parallelism must wrap the precision hooks$"):
        apply_precision(model, "mixed")
    hooked = bf16_transformer(layers=1)
    HookRegistry.check_if_exists_or_initialize(hooked.blocks[0]).register_hook(Nothing(), "b")
    HookRegistry.check_if_exists_or_initialize(hooked.proj_out).register_hook(Nothing(), "a")
    with pytest.raises(RuntimeError, match=r"^cannot deep-copy a transformer with diffusers hooks \(a, b\): their "
                                           r"registry refers to the original modules; build a new transformer "
                                           r"instead$"):
        copy.deepcopy(hooked)


def test_the_sinusoid_is_the_releases_float64_one_to_the_last_bit():
    """Frequencies in float64 too (an integer `arange` divides into float32: angles off in the last bits)."""
    from fantasy.model.precision import sinusoid_fp64

    timestep = torch.tensor([999.0, 937.5, 3.0])
    expected = release_sinusoid(256, timestep).float()
    assert torch.equal(sinusoid_fp64(timestep, 256), expected)
