"""The few-step mode: a step- and CFG-distilled LoRA (lightx2v) on the Wan2.1-I2V-14B DiT, 4 steps.

lightx2v's LoRAs for Wan2.1-I2V-14B come in the original Wan key names
(`diffusion_model.blocks.N.self_attn.q.lora_down.weight`, `.lora_up.weight`, `.alpha`, ...), which
diffusers' `WanLoraLoaderMixin.load_lora_weights` converts. Kijai's repack
`Kijai/WanVideo_comfy` / `Lightx2v/lightx2v_I2V_14B_480p_cfg_step_distill_rank128_bf16.safetensors`
is the file diffusers' Wan LoRA loader was checked with (diffusers PR #12040); it was distilled
from the 480P model, which has the same architecture as the 720P one FantasyTalking runs on.
lightx2v samples them with `enable_cfg: false`, shift 5 and timesteps [1000, 750, 500, 250] of a
1000-step shifted schedule: our `set_official_timesteps(4)` gives exactly those, and its sampler
re-noises the predicted clean latent at each step (our `make_scheduler(stochastic=True)`).

Guidance: the text CFG is distilled into the LoRA, so text guidance is 1 (no negative pass). The
audio CFG is FantasyTalking's own and was not distilled: by default it is off too (1 pass per step,
as lightx2v runs); an audio guidance above 1 is allowed and costs a second (audio-off) pass per step.

The LoRA attaches to the DiT's own linears only; the audio adapter's K/V (`attn2.processor.*`) are
never targeted. Fusing (the default) folds it into the weights: no extra matmuls per step, and the
DiT can then be fp8-quantized or compiled like the plain one.
"""

from __future__ import annotations

from pathlib import Path

from fantasy.model.sampling import make_scheduler
from fantasy.weights.loras import LoraSpec, load_loras, lora_layer_names  # noqa: F401 (lora_layer_names re-exported)

FEW_STEPS = 4
FEW_STEP_TEXT_GUIDANCE = 1.0  # distilled into the LoRA
FEW_STEP_AUDIO_GUIDANCE = 1.0  # not distilled; > 1 adds an audio-off pass per step
LORA_NAME = "distill"


def load_distilled_lora(pipe, path: str | Path, scale: float = 1.0, fuse: bool = True) -> bool:
    """Load the few-step LoRA into the pipeline's DiT (`fantasy.weights.loras`); returns whether it was fused.

    A GGUF DiT keeps the LoRA as separate layers: its packed weights cannot take an added delta.
    """
    [applied] = load_loras(pipe, [LoraSpec(Path(path), scale)], fuse=fuse, names=[LORA_NAME])
    return applied.fused


def use_distilled_sampler(pipe) -> None:
    """The step-distilled models' sampler: predict x0, re-noise to the next sigma (same timesteps)."""
    pipe.scheduler = make_scheduler(stochastic=True)
    pipe.few_step_mode = True  # the app and CLI then default to 4 steps, guidance 1
