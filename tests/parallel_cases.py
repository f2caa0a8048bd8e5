"""The context-parallel cases, shared by the 2-process worker (`tests/parallel_worker.py`) and the reference
runs in `tests/test_parallel.py`: the same pipelines and calls, built the same way in every process.

The DiT's precision policy (`fantasy.model.precision`) is in the matrix: the fp32 cases run the default `mixed`
policy (there it only changes the timestep sinusoid), and two bf16 DiTs run `mixed` (fp32 residual stream and
head around bf16 attention/FFN) and `stock` (all bf16), where the policies really differ.

One CPU thread everywhere: torchrun starts its processes with OMP_NUM_THREADS=1, and the number of threads a
matmul uses changes its float rounding, so the one-process reference must use one thread too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import torch
from PIL import Image

from fantasy.media.audio import clip_samples
from fantasy.speed.switches import SpeedOptions
from tests.conftest import speech_like

FACE = Image.new("RGB", (32, 32), (190, 140, 120))
# name -> (width, height), frames, steps, speed options, trained motion/identity modules, DiT dtype (fp32 if absent),
# heads (the tiny DiT's 2 if absent), `sharded`: FSDP2 shards the DiT and umT5 over the processes (`--vram sharded`)
CASES: dict[str, dict] = {
    # 5 latent frames x 5 x 7 = 175 tokens: 88 + 87 (diffusers' uneven split), the cut inside frame 2
    "uneven": dict(size=(112, 80), frames=17, steps=2, speed={}, modules=False),
    # 3 x 4 x 4 = 48 tokens: 24 + 24 (the plain even split), the cut inside frame 1
    "even": dict(size=(64, 64), frames=9, steps=2, speed={}, modules=False),
    # batched guidance (3 passes as one batch of 3) and a step cache that really skips blocks
    "batched+cache": dict(size=(64, 64), frames=13, steps=5,
                          speed=dict(batch_guidance=True, step_cache="fbc", cache_threshold=0.3), modules=False),
    # trained (random) motion and identity modules, with motion coefficients and a face crop
    "modules": dict(size=(64, 64), frames=9, steps=2, speed={}, modules=True),
    # a bf16 DiT under each precision policy, on the uneven split
    "bf16-mixed": dict(size=(112, 80), frames=17, steps=2, speed=dict(precision="mixed"), modules=False,
                       dtype=torch.bfloat16),
    "bf16-stock": dict(size=(112, 80), frames=17, steps=2, speed=dict(precision="stock"), modules=False,
                       dtype=torch.bfloat16),
    # the weights sharded with FSDP2 (the split of the tokens unchanged): fp32 with the step cache, bf16 mixed
    "sharded+cache": dict(size=(64, 64), frames=13, steps=5, sharded=True,
                          speed=dict(batch_guidance=True, step_cache="fbc", cache_threshold=0.3), modules=True),
    "bf16-sharded": dict(size=(112, 80), frames=17, steps=2, speed=dict(precision="mixed"), modules=False,
                         dtype=torch.bfloat16, sharded=True),
}
# Three processes: Ulysses over 3 needs 3 or 6 heads (the tiny DiT's 2 do not split: refused, see the tests).
# 175 tokens -> 59 + 58 + 58; 48 tokens -> 16 x 3.
CASES3: dict[str, dict] = {
    "uneven": dict(size=(112, 80), frames=17, steps=2, speed={}, modules=False, heads=6),
    "sharded+cache": dict(size=(64, 64), frames=13, steps=5, sharded=True, heads=6, modules=True,
                          speed=dict(batch_guidance=True, step_cache="fbc", cache_threshold=0.3)),
    "bf16-sharded": dict(size=(112, 80), frames=17, steps=2, speed=dict(precision="mixed"), modules=False,
                         dtype=torch.bfloat16, sharded=True, heads=6),
}


def build(case: dict, parallel=None):
    """A fresh tiny pipeline for `case`, its speed options (and context parallelism) applied; `parallel`
    shards the weights too when the case says `sharded`."""
    from dataclasses import replace

    from fantasy.model.assemble import assemble
    from fantasy.speed.switches import apply_speed
    from fantasy.weights.tiny import HEADS, random_adapter_weights, tiny_components

    pipe = assemble(tiny_components(dtype=case.get("dtype", torch.float32), heads=case.get("heads", HEADS)), "cpu")
    random_adapter_weights(pipe)  # what `load_pipeline("tiny")` builds, with the case's head count
    pipe.set_progress_bar_config(disable=True)
    if parallel is not None and case.get("sharded"):
        parallel = replace(parallel, shard_weights=True)
    if case["modules"]:
        with_trained_modules(pipe)
    apply_speed(pipe, SpeedOptions(**case["speed"]), parallel)
    return pipe


def with_trained_modules(pipe):
    """Install motion and identity modules with seeded random weights (as a trained checkpoint would)."""
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


def call(pipe, case: dict) -> torch.Tensor:
    """One pipeline call: final latents."""
    frames = case["frames"]
    windows, lengths = pipe.encode_audio(clip_samples(speech_like(frames / 23 + 0.2), frames, 23), frames)
    extra = dict(motion=(0.8, 0.2), face_image=FACE) if case["modules"] else {}
    image = Image.new("RGB", case["size"], (90, 120, 160))
    return pipe.denoise(image, windows, lengths, "a person is talking", num_frames=frames,
                num_inference_steps=case["steps"], generator=torch.Generator().manual_seed(3), **extra)


class BlockCounter:
    """Blocks that really ran (their self-attention was called; a cache-skipped block never reaches it)."""

    def __init__(self, pipe):
        self.count = 0
        for block in pipe.transformer.blocks:
            block.attn1.register_forward_hook(self._hit)

    def _hit(self, *_):
        self.count += 1


def speech_file(folder: Path, seconds: float) -> Path:
    path = folder / f"speech-{seconds:g}s.wav"
    soundfile.write(path, speech_like(seconds), 16_000)
    return path


def portrait_file(folder: Path) -> Path:
    path = folder / "portrait.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 80, 3), dtype=np.uint8)).save(path)
    return path
