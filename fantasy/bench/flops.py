"""The physical floor: FLOPs of one DiT pass from its config and token counts, and the GPU's peak rate.

Every matmul of `WanTransformer3DModel.forward` with the FantasyTalking adapter is counted (2 FLOPs
per multiply-add); elementwise work, norms and RoPE are not, as they run far below the matmul peak
anyway. A test checks the count against `torch.utils.flop_counter` on a real forward.
At 512x512x81 (21,504 tokens, 512 + 257 context tokens) one pass is about 0.91 PFLOP: block linears
~514 T, self-attention ~379 T, cross-attention ~13.5 T, context K/V ~3 T; the rest is small.
"""

from __future__ import annotations

from dataclasses import dataclass

# Dense (no sparsity) tensor-core peaks in TFLOP/s from NVIDIA's datasheets: (name part, bf16, fp8).
# Checked in order, so the specific H100 variants come before the generic SXM name.
PEAK_TFLOPS: list[tuple[str, float, float | None]] = [
    ("H100 PCIe", 756.0, 1513.0),
    ("H100 NVL", 835.0, 1671.0),
    ("H100", 989.0, 1979.0),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("H200", 989.0, 1979.0),
    ("A100", 312.0, None),  # no fp8 tensor cores
]


@dataclass(frozen=True)
class PassFlops:
    """FLOPs of one transformer pass, split by what can run in fp8 (`block_linear`) and what cannot."""

    block_linear: float  # video-token and context projections + FFN inside the blocks
    attention: float  # self- and cross-attention scores and values, the audio branch's included
    other: float  # patch embedding, time/text/image embedders, output head, audio K/V

    @property
    def total(self) -> float:
        return self.block_linear + self.attention + self.other

    def floor_seconds(self, bf16_tflops: float, fp8_tflops: float | None = None) -> float:
        """Time at the peak rate; with `fp8_tflops`, the block linears run at that rate."""
        linear_rate = fp8_tflops if fp8_tflops else bf16_tflops
        return self.block_linear / (linear_rate * 1e12) + (self.attention + self.other) / (bf16_tflops * 1e12)


def video_tokens(config: dict, frames: int, width: int, height: int) -> int:
    """Latent frames x patches: 21 x 32 x 32 = 21,504 at 512x512x81."""
    pt, ph, pw = config["patch_size"]
    latent_frames = (frames - 1) // 4 + 1
    return (latent_frames // pt) * (height // 8 // ph) * (width // 8 // pw)


def pass_flops(config: dict, tokens: int, text_tokens: int, image_tokens: int,
               audio: tuple[int, int, int] | None = None) -> PassFlops:
    """One pass of the DiT on `tokens` video tokens; `audio` = (latent frames, window width, context dim)."""
    d = config["num_attention_heads"] * config["attention_head_dim"]
    layers, ffn = config["num_layers"], config["ffn_dim"]
    n, ctx = tokens, text_tokens + image_tokens
    patch = config["patch_size"][0] * config["patch_size"][1] * config["patch_size"][2]

    per_block_linear = 2 * n * (4 * d * d + 2 * d * d + 2 * d * ffn) + 2 * ctx * 2 * d * d
    per_block_attention = 4 * n * n * d + 4 * n * ctx * d
    per_block_other = 0
    if audio is not None:
        latent_frames, width, context_dim = audio
        per_block_attention += 4 * n * width * d  # each frame's tokens against its own window
        per_block_other += 2 * latent_frames * width * 2 * context_dim * d  # the adapter's K/V
    image_dim, freq = config["image_dim"], config["freq_dim"]
    embed = (
        2 * n * config["in_channels"] * patch * d  # patch embedding (Conv3d)
        + 2 * (freq * d + d * d + d * 6 * d)  # timestep MLP and the 6 modulation vectors
        + 2 * text_tokens * (config["text_dim"] * d + d * d)  # text projection
        + 2 * image_tokens * (image_dim * image_dim + image_dim * d)  # CLIP token projection
        + 2 * n * d * config["out_channels"] * patch  # output head
    )
    return PassFlops(
        block_linear=float(layers * per_block_linear),
        attention=float(layers * per_block_attention),
        other=float(layers * per_block_other + embed),
    )


def peak_tflops(device_name: str) -> tuple[float, float | None] | None:
    """(bf16, fp8) dense peaks for a known GPU name, else None (pass --peak-tflops)."""
    for part, bf16, fp8 in PEAK_TFLOPS:
        if part.lower() in device_name.lower():
            return bf16, fp8
    return None
