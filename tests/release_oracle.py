"""The release's per-step computation, re-derived as small functions for the oracle tests.

Written from reading fantasy-talking@8c2d0c9 (`infer.py`, `model.py`) and the DiffSynth it vendors
(`diffsynth/pipelines/wan_video.py`, `models/wan_video_dit.py`, `schedulers/flow_match.py`), not from
our package: nothing here imports `fantasy`. The DiT is the release's `WanModel.forward` written out
over a diffusers `WanTransformer3DModel`'s weights (original Wan names in the comments), with the
release's `WanCrossAttentionProcessor` in every block (its padded audio keys masked, as flash-attn's
`k_lens` does). `bf16=True` emulates what the release computes on a GPU: bf16 weights, bf16 autocast
around the matmuls, fp32 inside its `autocast(float32)` regions (time embedding, modulation, residual
adds, head) and fp32 latents.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SHIFT = 5.0
LN_EPS = 1e-6  # WanLayerNorm in the blocks and the head
MLP_LN_EPS = 1e-5  # MLPProj's torch.nn.LayerNorm (CLIP image tokens)
RMS_EPS = 1e-6


# ---- schedule and sampler (schedulers/flow_match.py, FlowMatchScheduler(shift=5, sigma_min=0, extra_one_step=True))


def release_schedule(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas, timesteps), fp32 as torch computes them there."""
    sigmas = torch.linspace(1.0, 0.0, steps + 1)[:-1]
    sigmas = SHIFT * sigmas / (1 + (SHIFT - 1) * sigmas)
    return sigmas, sigmas * 1000


def release_step(sample: torch.Tensor, velocity: torch.Tensor, sigmas: torch.Tensor, index: int) -> torch.Tensor:
    following = sigmas[index + 1] if index + 1 < len(sigmas) else 0
    return sample + velocity * (following - sigmas[index])


def release_guidance(full, text, uncond, cfg: float, audio_cfg: float):
    """wan_video.py: noise_pred_no_cond + cfg*(noaudio - no_cond) + audio_cfg*(posi - noaudio)."""
    if uncond is None:
        return text + audio_cfg * (full - text)
    return uncond + cfg * (text - uncond) + audio_cfg * (full - text)


# ---- condition (WanVideoPipeline.encode_image) -----------------------------------------------------


def release_pixels(rgb_uint8: torch.Tensor) -> torch.Tensor:
    """BasePipeline.preprocess_image: [H, W, 3] uint8 -> [1, 3, H, W], `x * (2/255) - 1` in fp32."""
    return (rgb_uint8.to(torch.float32) * (2 / 255) - 1).permute(2, 0, 1)[None]


def release_condition(vae_mu: torch.Tensor, mean, std, num_frames: int) -> torch.Tensor:
    """y = [mask (4), (mu - mean) * (1/std) (16)] for the first frame known, the rest zero: [1, 20, T, h, w]."""
    mean = torch.tensor(mean).view(1, -1, 1, 1, 1)
    scale = 1.0 / torch.tensor(std)
    latent = (vae_mu.float() - mean) * scale.view(1, -1, 1, 1, 1)
    h, w = latent.shape[3], latent.shape[4]
    msk = torch.ones(1, num_frames, h, w)
    msk[:, 1:] = 0
    msk = torch.concat([torch.repeat_interleave(msk[:, 0:1], repeats=4, dim=1), msk[:, 1:]], dim=1)
    msk = msk.view(1, msk.shape[1] // 4, 4, h, w).transpose(1, 2)[0]
    return torch.concat([msk, latent[0]])[None]


# ---- the DiT ------------------------------------------------------------------------------------------


class Numerics:
    """fp32 everywhere, or the release's bf16 autocast (matmuls, attention, GELU, RMSNorm output in bf16)."""

    def __init__(self, bf16: bool):
        self.low = torch.bfloat16 if bf16 else torch.float32

    def linear(self, x, weight, bias=None):  # autocast(bf16): inputs and weights cast, bf16 result
        return F.linear(x.to(self.low), weight.to(self.low), None if bias is None else bias.to(self.low))

    def linear32(self, x, weight, bias=None):  # inside autocast(float32): weights upcast
        return F.linear(x.float(), weight.float(), None if bias is None else bias.float())

    def attention(self, q, k, v, k_lens=None):
        """[B, S, N, D] x [B, L, N, D]; softmax in fp32, inputs/outputs in the low dtype (flash-attn)."""
        q, k, v = (t.to(self.low).float() for t in (q, k, v))
        logits = torch.einsum("bsnd,blnd->bnsl", q, k) / math.sqrt(q.shape[-1])
        if k_lens is not None:
            keep = torch.arange(k.shape[1])[None, :] < k_lens[:, None]  # [B, L]
            logits = logits.masked_fill(~keep[:, None, None, :], float("-inf"))
        out = torch.einsum("bnsl,blnd->bsnd", logits.softmax(-1), v)
        return out.to(self.low)

    def rms_norm(self, x, weight):  # WanRMSNorm: _norm(x.float()).type_as(x) * weight
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + RMS_EPS)
        return normed.to(x.dtype) * weight.to(self.low)

    def gelu(self, x, tanh: bool):
        return F.gelu(x.to(self.low), approximate="tanh" if tanh else "none")


def layer_norm(x, weight=None, bias=None, eps=LN_EPS):  # WanLayerNorm / autocast: fp32
    return F.layer_norm(x.float(), (x.shape[-1],), None if weight is None else weight.float(),
                        None if bias is None else bias.float(), eps)


def sinusoid(dim: int, position: torch.Tensor) -> torch.Tensor:
    half = dim // 2
    position = position.type(torch.float64)
    angles = torch.outer(position, torch.pow(10000, -torch.arange(half).to(position).div(half)))
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def rope_tables(head_dim: int) -> torch.Tensor:
    def params(dim):
        freqs = torch.outer(torch.arange(1024), 1.0 / torch.pow(10000, torch.arange(0, dim, 2).to(torch.float64).div(dim)))
        return torch.polar(torch.ones_like(freqs), freqs)

    d = head_dim
    return torch.cat([params(d - 4 * (d // 6)), params(2 * (d // 6)), params(2 * (d // 6))], dim=1)


def rope_apply(x: torch.Tensor, grid: tuple[int, int, int], freqs: torch.Tensor) -> torch.Tensor:
    """Complex rotation in float64 over (frame, row, column) frequencies; result fp32."""
    f, h, w = grid
    n, c = x.shape[2], x.shape[3] // 2
    parts = freqs.split([c - 2 * (c // 3), c // 3, c // 3], dim=1)
    seq = f * h * w
    xi = torch.view_as_complex(x[0, :seq].to(torch.float64).reshape(seq, n, -1, 2))
    table = torch.cat([parts[0][:f].view(f, 1, 1, -1).expand(f, h, w, -1),
                       parts[1][:h].view(1, h, 1, -1).expand(f, h, w, -1),
                       parts[2][:w].view(1, 1, w, -1).expand(f, h, w, -1)], dim=-1).reshape(seq, 1, -1)
    return torch.view_as_real(xi * table).flatten(2)[None].float()


class ReleaseDiT:
    """`WanModel.forward` with `WanCrossAttentionProcessor` in every block, over diffusers' weights."""

    def __init__(self, transformer, bf16: bool = False):
        # bf16: what the release stores (ModelManager(torch_dtype=bf16)); fp32: the weights as given.
        dtype = torch.bfloat16 if bf16 else torch.float32
        self.w = {k: v.detach().to(dtype) for k, v in transformer.state_dict().items()}
        self.num = Numerics(bf16)
        self.config = transformer.config
        self.heads = transformer.config.num_attention_heads
        self.freqs = rope_tables(transformer.config.attention_head_dim)

    def __call__(self, latents, y, timestep, text, clip, audio, audio_lens, audio_scale):
        w, num, cfg = self.w, self.num, self.config
        x = torch.cat([latents, y], dim=1)
        x = F.conv3d(x.to(num.low), w["patch_embedding.weight"], w["patch_embedding.bias"].to(num.low),
                     stride=tuple(cfg.patch_size))  # autocast: bf16 conv
        grid = tuple(x.shape[2:])
        x = x.flatten(2).transpose(1, 2)
        # time embeddings, in autocast(float32)
        e = num.linear32(sinusoid(cfg.freq_dim, timestep).float(), w["condition_embedder.time_embedder.linear_1.weight"],
                         w["condition_embedder.time_embedder.linear_1.bias"])
        e = num.linear32(F.silu(e), w["condition_embedder.time_embedder.linear_2.weight"],
                         w["condition_embedder.time_embedder.linear_2.bias"])
        e0 = num.linear32(F.silu(e), w["condition_embedder.time_proj.weight"], w["condition_embedder.time_proj.bias"])
        e0 = e0.unflatten(1, (6, -1))
        # text_embedding: Linear, GELU(tanh), Linear; img_emb (MLPProj): LN, Linear, GELU, Linear, LN
        t = num.linear(text, w["condition_embedder.text_embedder.linear_1.weight"],
                       w["condition_embedder.text_embedder.linear_1.bias"])
        t = num.linear(num.gelu(t, tanh=True), w["condition_embedder.text_embedder.linear_2.weight"],
                       w["condition_embedder.text_embedder.linear_2.bias"])
        p = "condition_embedder.image_embedder."
        c = layer_norm(clip, w[p + "norm1.weight"], w[p + "norm1.bias"], MLP_LN_EPS)
        c = num.linear(c, w[p + "ff.net.0.proj.weight"], w[p + "ff.net.0.proj.bias"])
        c = num.linear(num.gelu(c, tanh=False), w[p + "ff.net.2.weight"], w[p + "ff.net.2.bias"])
        c = layer_norm(c, w[p + "norm2.weight"], w[p + "norm2.bias"], MLP_LN_EPS)
        context = torch.concat([c, t], dim=1)  # autocast promotes: fp32
        for i in range(cfg.num_layers):
            x = self.block(i, x, e0, grid, context, audio, audio_lens, audio_scale)
        # head, in autocast(float32)
        shift, scale = (w["scale_shift_table"].float() + e.unsqueeze(1)).chunk(2, dim=1)
        x = num.linear32(layer_norm(x) * (1 + scale) + shift, w["proj_out.weight"], w["proj_out.bias"])
        return self.unpatchify(x, grid).float()

    def block(self, i, x, e0, grid, context, audio, audio_lens, audio_scale):
        w, num, b = self.w, self.num, f"blocks.{i}."
        e = (w[b + "scale_shift_table"].float() + e0).chunk(6, dim=1)
        y = self.self_attention(b, layer_norm(x) * (1 + e[1]) + e[0], grid)
        x = x + y * e[2]
        x = x + self.cross_attention(b, layer_norm(x, w[b + "norm2.weight"], w[b + "norm2.bias"]), context, audio,
                                     audio_lens, audio_scale)
        y = num.linear(layer_norm(x) * (1 + e[4]) + e[3], w[b + "ffn.net.0.proj.weight"], w[b + "ffn.net.0.proj.bias"])
        y = num.linear(num.gelu(y, tanh=True), w[b + "ffn.net.2.weight"], w[b + "ffn.net.2.bias"])
        return x + y * e[5]

    def heads_view(self, t):
        return t.unflatten(2, (self.heads, -1))

    def self_attention(self, b, x, grid):
        w, num, a = self.w, self.num, b + "attn1."
        q = self.heads_view(num.rms_norm(num.linear(x, w[a + "to_q.weight"], w[a + "to_q.bias"]), w[a + "norm_q.weight"]))
        k = self.heads_view(num.rms_norm(num.linear(x, w[a + "to_k.weight"], w[a + "to_k.bias"]), w[a + "norm_k.weight"]))
        v = self.heads_view(num.linear(x, w[a + "to_v.weight"], w[a + "to_v.bias"]))
        out = num.attention(rope_apply(q, grid, self.freqs), rope_apply(k, grid, self.freqs), v)
        return num.linear(out.flatten(2), w[a + "to_out.0.weight"], w[a + "to_out.0.bias"])

    def cross_attention(self, b, x, context, audio, audio_lens, audio_scale):
        """WanCrossAttentionProcessor (model.py): text + CLIP image + per-latent-frame audio, then `o`."""
        w, num, a = self.w, self.num, b + "attn2."
        images = context.shape[1] - 512
        ctx_img, ctx = context[:, :images], context[:, images:]
        q = self.heads_view(num.rms_norm(num.linear(x, w[a + "to_q.weight"], w[a + "to_q.bias"]), w[a + "norm_q.weight"]))
        k = self.heads_view(num.rms_norm(num.linear(ctx, w[a + "to_k.weight"], w[a + "to_k.bias"]), w[a + "norm_k.weight"]))
        v = self.heads_view(num.linear(ctx, w[a + "to_v.weight"], w[a + "to_v.bias"]))
        k_img = self.heads_view(num.rms_norm(num.linear(ctx_img, w[a + "add_k_proj.weight"], w[a + "add_k_proj.bias"]),
                                             w[a + "norm_added_k.weight"]))
        v_img = self.heads_view(num.linear(ctx_img, w[a + "add_v_proj.weight"], w[a + "add_v_proj.bias"]))
        img_x = num.attention(q, k_img, v_img).flatten(2)
        txt_x = num.attention(q, k, v).flatten(2)
        frames = audio.shape[1]
        n, d = q.shape[2], q.shape[3]
        audio_q = q.reshape(frames, -1, n, d)
        ip_key = num.linear(audio, w[a + "processor.k_proj.weight"]).reshape(frames, -1, n, d)
        ip_value = num.linear(audio, w[a + "processor.v_proj.weight"]).reshape(frames, -1, n, d)
        audio_x = num.attention(audio_q, ip_key, ip_value, audio_lens).reshape(1, q.shape[1], n * d)
        out = txt_x + img_x + audio_x * audio_scale
        return num.linear(out, w[a + "to_out.0.weight"], w[a + "to_out.0.bias"])

    def unpatchify(self, x, grid):
        c = self.config.out_channels
        patch = tuple(self.config.patch_size)
        u = x[0][: math.prod(grid)].view(*grid, *patch, c)
        u = torch.einsum("fhwpqrc->cfphqwr", u)
        return u.reshape(c, *[i * j for i, j in zip(grid, patch, strict=True)])[None]


def release_sample(dit: ReleaseDiT, noise, y, steps, text, negative, clip, audio, audio_lens, audio_weight,
                   cfg: float, audio_cfg: float) -> torch.Tensor:
    """The release's denoising loop (WanVideoPipeline.__call__ with audio_cfg_scale set): fp32 latents."""
    sigmas, timesteps = release_schedule(steps)
    latents = noise
    for i, t in enumerate(timesteps):
        t = t.unsqueeze(0).to(torch.float32)
        full = dit(latents, y, t, text, clip, audio, audio_lens, audio_weight)
        text_only = dit(latents, y, t, text, clip, audio, audio_lens, 0.0)
        uncond = dit(latents, y, t, negative, clip, audio, audio_lens, 0.0) if cfg != 1.0 else None
        latents = release_step(latents, release_guidance(full, text_only, uncond, cfg, audio_cfg), sigmas, i)
    return latents


# ---- decode (models/wan_video_vae.py WanVideoVAE.tiled_decode; infer.py passes tiled=True, 30x52 / 15x26) ----


def release_tile_tasks(height: int, width: int, size=(30, 52), stride=(15, 26)) -> list[tuple[int, int, int, int]]:
    """(h, h + size, w, w + size) per tile; a start is dropped when the tile before it already reaches the edge."""
    tasks = []
    for h in range(0, height, stride[0]):
        if h - stride[0] >= 0 and h - stride[0] + size[0] >= height:
            continue
        for w in range(0, width, stride[1]):
            if w - stride[1] >= 0 and w - stride[1] + size[1] >= width:
                continue
            tasks.append((h, h + size[0], w, w + size[1]))
    return tasks


def release_tile_mask(rows: int, cols: int, bounds: tuple[bool, bool, bool, bool], border: tuple[int, int]):
    """build_mask: the smaller of a row ramp and a column ramp; no ramp on a side that is the frame's edge."""
    def ramp(length, at_start_edge, at_end_edge, width):
        x = torch.ones((length,))
        if not at_start_edge:
            x[:width] = (torch.arange(width) + 1) / width
        if not at_end_edge:
            x[-width:] = torch.flip((torch.arange(width) + 1) / width, dims=(0,))
        return x

    r = ramp(rows, bounds[0], bounds[1], border[0])[:, None].expand(rows, cols)
    c = ramp(cols, bounds[2], bounds[3], border[1])[None, :].expand(rows, cols)
    return torch.stack([r, c]).min(dim=0).values


def release_tiled_decode(decode_tile, latents: torch.Tensor, size=(30, 52), stride=(15, 26), factor: int = 8):
    """Blend `decode_tile(latent tile)` ([1, 3, F, px, px]) over the frame; clamp to [-1, 1]."""
    _, _, frames, height, width = latents.shape
    out_frames = frames * 4 - 3
    weight = torch.zeros((1, 1, out_frames, height * factor, width * factor), dtype=latents.dtype)
    values = torch.zeros((1, 3, out_frames, height * factor, width * factor), dtype=latents.dtype)
    for h, h_, w, w_ in release_tile_tasks(height, width, size, stride):
        tile = decode_tile(latents[:, :, :, h:h_, w:w_])
        mask = release_tile_mask(tile.shape[3], tile.shape[4], (h == 0, h_ >= height, w == 0, w_ >= width),
                                 ((size[0] - stride[0]) * factor, (size[1] - stride[1]) * factor)).to(latents.dtype)
        rows, cols = slice(h * factor, h * factor + tile.shape[3]), slice(w * factor, w * factor + tile.shape[4])
        values[:, :, :, rows, cols] += tile * mask
        weight[:, :, :, rows, cols] += mask
    return (values / weight).float().clamp_(-1, 1)


def release_vae_tile_decoder(vae):
    """VideoVAE_.decode on a normalised latent tile: z / (1/std) + mean, conv2, the causal decoder frame by
    frame (diffusers' Wan VAE network), no clamp."""
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    inverse_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)

    def decode(tile):
        z = tile / inverse_std + mean
        vae.clear_cache()
        x = vae.post_quant_conv(z)
        frames = []
        for i in range(x.shape[2]):
            vae._conv_idx = [0]
            frames.append(vae.decoder(x[:, :, i : i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                                      first_chunk=i == 0))
        vae.clear_cache()
        return torch.cat(frames, dim=2)

    return decode


def release_frames(video: torch.Tensor):
    """WanVideoPipeline.tensor2video: ((x + 1) * 127.5).clip(0, 255) -> uint8 by truncation, [F, H, W, 3]."""
    return ((video[0].permute(1, 2, 3, 0).float() + 1) * 127.5).clip(0, 255).numpy().astype("uint8")
