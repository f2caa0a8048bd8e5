"""FantasyTalking's audio adapter on diffusers' `WanTransformer3DModel`.

Two pieces, as released: `AudioProjModel` (wav2vec2 768 -> 2048, LayerNorm) and, in every block's
cross-attention (`blocks[i].attn2`), an audio branch with zero-initialised K/V projections
(2048 -> 5120) that re-uses the block's own normalised query. Each latent frame's tokens attend only
to their own audio window; the result, times `audio_scale`, is added to the text + image attention
before `to_out`.

The branch lives in an `nn.Module` attention processor that reproduces diffusers' `WanAttnProcessor`
for text and image tokens, so with zero K/V or no audio the transformer is bit-for-bit the stock one.
Audio reaches the processors through a shared `AudioContext` set before each transformer call, since
`WanTransformer3DModel.forward` does not forward kwargs to its blocks. The processor also hosts the
paper's identity branch when one is installed (`fantasy.model.identity`), added at the same place.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.transformers.transformer_wan import (
    _get_added_kv_projections,
    _get_qkv_projections,
)
from torch import nn

from fantasy.model.frame_shards import FrameSpan


class AudioProjModel(ModelMixin, ConfigMixin):
    """wav2vec2 features -> the adapter's context space: Linear (no bias) then LayerNorm.

    Applied to the whole clip before windowing, so padded window slots stay exact zeros.
    """

    @register_to_config
    def __init__(self, audio_dim: int = 768, context_dim: int = 2048):
        super().__init__()
        self.proj = nn.Linear(audio_dim, context_dim, bias=False)
        self.norm = nn.LayerNorm(context_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(features))


@dataclass
class AudioContext:
    """What the audio processors read during one transformer call (shared by all blocks).

    windows: [B or 1, T_lat, W, C] projected audio windows; lengths: [T_lat] or [B, T_lat] valid tokens;
    scale: the audio weight, a float or a [B] tensor (batched guidance runs passes with different scales).

    The data-dependent facts (is the branch on at all, which window slots are padding) are settled
    once per call in `use`, in eager code: the processors then never branch on tensor values, so
    `torch.compile(fullgraph=True)` can trace them, and a GPU syncs once per pass instead of per block.
    """

    windows: torch.Tensor | None = None
    lengths: torch.Tensor | None = None
    scale: float | torch.Tensor = 1.0
    _active: bool = field(default=False, init=False, repr=False)
    _key_valid: torch.Tensor | None = field(default=None, init=False, repr=False)

    @contextmanager
    def use(self, windows: torch.Tensor | None, lengths: torch.Tensor | None, scale: float | torch.Tensor):
        """Set the audio for the duration of a `with` block, then clear it (no stale audio leaks)."""
        previous = (self.windows, self.lengths, self.scale, self._active, self._key_valid)
        self.windows, self.lengths, self.scale = windows, lengths, scale
        self._active, self._key_valid = self._settle()
        try:
            yield self
        finally:
            self.windows, self.lengths, self.scale, self._active, self._key_valid = previous

    def _settle(self) -> tuple[bool, torch.Tensor | None]:
        """(branch on?, [T_lat, W] or [B, T_lat, W] valid-key mask, None when no slot is padding)."""
        if self.windows is None:
            return False, None
        scale = self.scale
        active = bool(torch.any(scale != 0)) if isinstance(scale, torch.Tensor) else scale != 0
        valid = torch.arange(self.windows.shape[2], device=self.lengths.device) < self.lengths[..., None]
        return active, None if bool(valid.all()) else valid

    @property
    def active(self) -> bool:
        return self._active

    @property
    def key_valid(self) -> torch.Tensor | None:
        return self._key_valid


class FantasyAudioAttnProcessor(nn.Module):
    """`WanAttnProcessor` for `attn2` plus FantasyTalking's per-latent-frame audio attention."""

    # Read by diffusers' `set_attention_backend` / `enable_parallelism`, as on `WanAttnProcessor`.
    _attention_backend = None
    _parallel_config = None

    def __init__(self, context_dim: int, inner_dim: int, num_image_tokens: int, audio: AudioContext):
        super().__init__()
        self.num_image_tokens = num_image_tokens
        self.k_proj = nn.Linear(context_dim, inner_dim, bias=False)
        self.v_proj = nn.Linear(context_dim, inner_dim, bias=False)
        nn.init.zeros_(self.k_proj.weight)
        nn.init.zeros_(self.v_proj.weight)
        # Not a submodule: one context object is shared by every block.
        object.__setattr__(self, "audio", audio)
        # The paper's identity branch (`fantasy.model.identity`), added only when trained weights are loaded.
        self.identity: nn.Module | None = None
        self.identity_context = None
        # Under context parallelism (`fantasy.speed.parallel`): where this process's video tokens sit in the
        # whole sequence, `locate(local_count) -> (start, total)`. None: the processor sees every token.
        self.token_shard = None

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb=None,
    ) -> torch.Tensor:
        image_tokens = None
        if attn.add_k_proj is not None:
            # Image-token count from the CLIP config, not `len - 512`: a shorter text would silently
            # reclassify image tokens as text in the stock processor.
            image_tokens = encoder_hidden_states[:, : self.num_image_tokens]
            encoder_hidden_states = encoder_hidden_states[:, self.num_image_tokens :]

        query, key, value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))

        image_out = None
        if image_tokens is not None:
            key_img, value_img = _get_added_kv_projections(attn, image_tokens)
            key_img = attn.norm_added_k(key_img).unflatten(2, (attn.heads, -1))
            value_img = value_img.unflatten(2, (attn.heads, -1))
            image_out = dispatch_attention_fn(
                query, key_img, value_img, attn_mask=None, dropout_p=0.0, is_causal=False,
                backend=self._attention_backend, parallel_config=None,
            )
            image_out = image_out.flatten(2, 3).type_as(query)

        out = dispatch_attention_fn(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
            backend=self._attention_backend, parallel_config=None,
        )
        out = out.flatten(2, 3).type_as(query)
        if image_out is not None:
            out = out + image_out
        if self.audio.active:
            out = out + self._scale_for(out) * self._audio_attention(query)
        if self.identity is not None and self.identity_context.active:
            out = out + self.identity_context.scale * self.identity(query, self.identity_context.tokens)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)

    def _scale_for(self, like: torch.Tensor) -> torch.Tensor | float:
        scale = self.audio.scale
        if isinstance(scale, torch.Tensor):
            return scale.to(device=like.device, dtype=like.dtype).view(-1, 1, 1)
        return scale

    def _audio_attention(self, query: torch.Tensor) -> torch.Tensor:
        """Each latent frame's query tokens attend to its own window; padded keys are masked."""
        windows = self.audio.windows.to(device=query.device, dtype=self.k_proj.weight.dtype)
        span = self._frame_span(query.shape[1], windows.shape[1])
        query = span.pad(query)  # whole latent frames (a context-parallel shard may start mid-frame)
        batch, seq, heads, head_dim = query.shape
        windows = windows[:, span.frames]
        if windows.shape[0] != batch:
            windows = windows.expand(batch, -1, -1, -1)
        num_latent, width = windows.shape[1], windows.shape[2]
        q = query.reshape(batch * num_latent, seq // num_latent, heads, head_dim).transpose(1, 2)
        k = self.k_proj(windows).reshape(batch * num_latent, width, heads, head_dim).transpose(1, 2)
        v = self.v_proj(windows).reshape(batch * num_latent, width, heads, head_dim).transpose(1, 2)
        mask = None
        valid = self.audio.key_valid
        if valid is not None:  # [T, W] or [B, T, W] -> [B*T, 1, 1, W]
            valid = valid[..., span.frames, :].to(query.device).expand(batch, num_latent, width)
            mask = valid.reshape(batch * num_latent, 1, 1, width)
        # Plain SDPA, not the dispatcher: it needs the key mask, which flash/sage backends do not take,
        # and it is a tiny share of the work (each frame's tokens against a window of ~20 audio tokens).
        out = F.scaled_dot_product_attention(q.to(k.dtype), k, v, attn_mask=mask)
        if mask is not None:  # a window with no valid token contributes nothing (SDPA would give NaN)
            out = out.masked_fill(~mask.any(-1, keepdim=True), 0.0)
        return span.unpad(out.transpose(1, 2).reshape(batch, seq, heads * head_dim)).type_as(query)

    def _frame_span(self, seq: int, num_latent: int) -> FrameSpan:
        """The latent frames this call's `seq` video tokens belong to (all of them unless sharded)."""
        start, total = (0, seq) if self.token_shard is None else self.token_shard.locate(seq)
        if total % num_latent != 0:
            raise ValueError(f"{total} video tokens do not split into {num_latent} latent frames")
        if self.token_shard is None:
            return FrameSpan.whole(num_latent)
        return FrameSpan.covering(start, seq, total // num_latent)


def install_audio_adapter(
    transformer, context_dim: int, num_image_tokens: int, audio: AudioContext | None = None
) -> AudioContext:
    """Put a zero-initialised audio processor on every `blocks[i].attn2`; return the shared context.

    Install before enabling offloading or compilation: the processor is a child of `attn2` and must
    move with its block.
    """
    audio = audio or AudioContext()
    param = next(transformer.parameters())
    for block in transformer.blocks:
        attn = block.attn2
        processor = FantasyAudioAttnProcessor(context_dim, attn.inner_dim, num_image_tokens, audio)
        processor._attention_backend = getattr(attn.processor, "_attention_backend", None)
        attn.set_processor(processor.to(device=param.device, dtype=param.dtype))
    return audio


def audio_processors(transformer) -> list[FantasyAudioAttnProcessor]:
    processors = [block.attn2.processor for block in transformer.blocks]
    if not all(isinstance(p, FantasyAudioAttnProcessor) for p in processors):
        raise RuntimeError("the audio adapter is not installed on this transformer")
    return processors
