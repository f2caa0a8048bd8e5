"""The default DiT storage (`--dit` not given): bf16 when it fits in the GPU's free memory, else GGUF Q8_0.

The rule, per `--vram` mode, with the free memory `torch.cuda.mem_get_info` reports before loading:

- `resident`: bf16 if  DiT (bf16) + adapter + CLIP + VAE + wav2vec2 (all resident)
  + the largest transient of: umT5 (on the GPU only while the prompt is encoded), the DiT's
  activations at the requested size (x3 with batched guidance), the VAE decode
  + a margin for the CUDA context and allocator slack  <=  free memory.
- `model-offload`: bf16 if the largest model that is on the GPU alone fits: DiT + adapter +
  activations, umT5, CLIP, VAE + decode (each + the margin).
- `group-offload`: always Q8_0: the DiT streams block by block from host RAM, so the transfer per
  block (and the host RAM) is what counts, and Q8_0 halves both.

bf16 is also only picked when its file is on disk; otherwise Q8_0, and the note says bf16 would fit.
Sizes are the released models' parameter counts x their dtypes; the activation and decode figures are
estimates (`ACTIVATION_BYTES_PER_TOKEN`, `VAE_DECODE_BYTES`) until `tools/gpu_check.py` has measured
them on a GPU. The choice and its reason are shown in the CLI's result line and the app's status line.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GiB = 1024**3
DIT_PARAMS = 16_394_878_784  # Wan2.1-I2V-14B transformer
DIT_BLOCKS = 40
ADAPTER_PARAMS = 40 * 2 * 2048 * 5120  # FantasyTalking's audio K/V, kept in the compute dtype
UMT5_PARAMS = 5_680_910_336  # umT5-XXL encoder, bf16
CLIP_PARAMS = 630_766_080 + 1280 * 1024  # ViT-H/14 + its projection, fp32
VAE_PARAMS = 126_892_531  # fp32
AUDIO_PARAMS = 94_371_712 + 1_576_960  # wav2vec2-base + projection, fp32
Q8_0_BYTES_PER_PARAM = 34 / 32  # one fp16 scale per 32 int8 values
ACTIVATION_BYTES_PER_TOKEN = 128 * 1024  # estimate: residual + FFN intermediate (13824) + attention, per pass
VAE_DECODE_BYTES = 4 * GiB  # estimate: Wan VAE decode of <= 512 px tiles
MARGIN_BYTES = 2 * GiB  # CUDA context, allocator fragmentation


@dataclass(frozen=True)
class DitChoice:
    mode: str  # a `fantasy.weights.quantize.DIT_MODES` key
    auto: bool  # picked by the rule (False: the user's --dit)
    reason: str

    def describe(self) -> str:
        return f"{self.mode} ({self.reason})" if self.auto else self.mode


def video_tokens(longest_edge: int, frames: int) -> int:
    """Transformer tokens of one window at most: latent frames x 2x2 patches of a square frame."""
    return ((frames - 1) // 4 + 1) * (longest_edge // 16) ** 2


def bf16_need_bytes(vram: str, longest_edge: int, frames: int = 81, batch: int = 1) -> int:
    """GPU memory the real preset needs with the bf16 DiT in `vram` mode (see the module docstring)."""
    dit = DIT_PARAMS * 2 + ADAPTER_PARAMS * 2
    activations = video_tokens(longest_edge, frames) * ACTIVATION_BYTES_PER_TOKEN * batch
    umt5, clip, vae, audio = UMT5_PARAMS * 2, CLIP_PARAMS * 4, VAE_PARAMS * 4, AUDIO_PARAMS * 4
    if vram == "resident":
        return dit + clip + vae + audio + max(umt5, activations, VAE_DECODE_BYTES) + MARGIN_BYTES
    if vram == "model-offload":
        return max(dit + activations, umt5, clip, vae + VAE_DECODE_BYTES) + MARGIN_BYTES
    return 2 * dit // DIT_BLOCKS + clip + vae + audio + max(activations, VAE_DECODE_BYTES) + MARGIN_BYTES


def free_vram_bytes(device: torch.device) -> int | None:
    """Free memory on a CUDA device right now; None anywhere else."""
    if device.type != "cuda":
        return None
    return torch.cuda.mem_get_info(device)[0]


def choose_dit(free: int | None, vram: str, longest_edge: int, frames: int = 81, batch: int = 1,
               bf16_on_disk: bool = True) -> DitChoice:
    """The rule above, for `free` bytes of free GPU memory (None: no CUDA device)."""
    if free is None:
        return DitChoice("q8_0", True, "auto: no CUDA GPU to fit bf16 on")
    if vram == "group-offload":
        return DitChoice("q8_0", True, "auto: group offloading streams the DiT, Q8_0 moves half the bytes")
    need = bf16_need_bytes(vram, longest_edge, frames, batch)
    fits = need <= free
    sizes = f"bf16 needs ~{need / GiB:.1f} GiB at {longest_edge} px, {free / GiB:.1f} GiB free"
    if fits and bf16_on_disk:
        return DitChoice("bf16", True, f"auto: {sizes}")
    if fits:
        return DitChoice("q8_0", True, f"auto: {sizes}, but the bf16 file is not on disk "
                                       "(python -m fantasy download --dit bf16)")
    return DitChoice("q8_0", True, f"auto: {sizes}")
