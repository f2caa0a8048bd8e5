"""The training objective: flow matching on Wan's latents, clip- or frame-level audio, lip-weighted in stage 2.

Flow matching as Wan is sampled (`fantasy.model.sampling`): x_σ = (1 - σ)·x0 + σ·ε, the DiT predicts the
velocity ε - x0 at timestep 1000·σ. σ is drawn as u ~ U(0, 1) shifted by 5 (σ = 5u / (1 + 4u)), the
same shift the sampler uses, so training spends its steps where inference does.

Stage 1 (clip level): the whole clip's audio is one window, so every video token attends to every
audio token (the release's 3-D `audio_proj` path). Stage 2 (frame level): each latent frame attends to
its own window (`fantasy.model.windows`, as at inference), and the squared error is weighted by
`1 + lip_weight` on tokens the lip-tracing mask covers (paper Eq. 3): the mouth region counts more,
the rest of the frame still counts.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fantasy.model.sampling import SHIFT
from fantasy.model.windows import split_into_windows

STAGES = (1, 2)


@dataclass
class Batch:
    """One clip's cached conditioning on the training device (batch dimension 1)."""

    latents: torch.Tensor  # [1, 16, T, h, w] normalised VAE latents of the video
    condition: torch.Tensor  # [1, 20, T, h, w] first-frame mask + latents
    prompt_embeds: torch.Tensor  # [1, 512, text_dim]
    clip_tokens: torch.Tensor  # [1, N, clip_dim] of the first frame
    audio_features: torch.Tensor  # [1, L, audio_dim] wav2vec2, before the trainable projection
    num_frames: int
    lip_mask: torch.Tensor | None = None  # [T, h/2, w/2] on the DiT token grid
    face_tokens: torch.Tensor | None = None  # [1, N, clip_dim] of the face crop
    motion: tuple[float, float] | None = None  # (expression, body) labels in [0, 1]
    drop_audio: bool = False  # condition dropout, so audio guidance has an audio-free branch to contrast


def sample_sigma(generator: torch.Generator, shift: float = SHIFT) -> float:
    u = float(torch.rand((), generator=generator))
    return shift * u / (1.0 + (shift - 1.0) * u)


def audio_windows(pipe, features: torch.Tensor, num_frames: int, stage: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected audio as windows: one clip-wide window (stage 1) or per latent frame (stage 2)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    tokens = pipe.audio_proj(features)
    if stage == 1:
        return tokens[:, None], torch.tensor([tokens.shape[1]], device=tokens.device)
    return split_into_windows(tokens, num_frames)


def loss_weights(lip_mask: torch.Tensor | None, latent_shape: torch.Size, lip_weight: float) -> torch.Tensor:
    """[T, h, w] per-latent-position weights: 1, plus `lip_weight` where the token-grid mask is set."""
    frames, height, width = latent_shape[2], latent_shape[3], latent_shape[4]
    if lip_mask is None or lip_weight == 0:
        return torch.ones(frames, height, width)
    upsampled = F.interpolate(lip_mask[None].float(), size=(height, width), mode="nearest")[0]
    return 1.0 + lip_weight * upsampled


def velocity_error(pipe, batch: Batch, sigma: float, noise: torch.Tensor) -> torch.Tensor:
    """[T, h, w] squared error (mean over channels) between the DiT's velocity and ε - x0 at noise level σ.

    Call it inside `with conditioned(pipe, batch, stage):` (see `flow_matching_loss`)."""
    x0 = batch.latents.float()
    noisy = (1.0 - sigma) * x0 + sigma * noise
    target = noise - x0
    dtype = pipe.transformer.dtype
    timestep = torch.full((1,), 1000.0 * sigma, device=x0.device)
    velocity = pipe.transformer(
        hidden_states=torch.cat([noisy, batch.condition.float()], dim=1).to(dtype), timestep=timestep,
        encoder_hidden_states=batch.prompt_embeds.to(dtype), encoder_hidden_states_image=batch.clip_tokens.to(dtype),
        return_dict=False,
    )[0]
    return (velocity.float() - target).pow(2).mean(dim=1)[0]


def flow_matching_loss(
    pipe, batch: Batch, stage: int, sigma: float, noise: torch.Tensor, lip_weight: float = 0.0
) -> torch.Tensor:
    """Weighted MSE between the DiT's velocity and ε - x0 at noise level σ (differentiable in the adapters).

    Call it, and `.backward()` on its result, inside `with conditioned(pipe, batch, stage):`: the
    processors read audio, motion and face from the shared contexts, and gradient checkpointing
    recomputes blocks during the backward pass.
    """
    error = velocity_error(pipe, batch, sigma, noise)
    weights = loss_weights(batch.lip_mask if stage == 2 else None, batch.latents.shape, lip_weight).to(error.device)
    return (weights * error).sum() / weights.sum()


class conditioned(ExitStack):  # noqa: N801 (used like a function: `with conditioned(pipe, batch, stage):`)
    """Set audio (stage-dependent windows), motion labels and face tokens on the pipeline's contexts."""

    def __init__(self, pipe, batch: Batch, stage: int):
        super().__init__()
        self.pipe, self.batch, self.stage = pipe, batch, stage

    def __enter__(self):
        super().__enter__()
        pipe, batch = self.pipe, self.batch
        windows, lengths = audio_windows(pipe, batch.audio_features, batch.num_frames, self.stage)
        self.enter_context(pipe.audio_context.use(windows, lengths, 0.0 if batch.drop_audio else 1.0))
        if pipe.motion_context is not None:
            self.enter_context(pipe.motion_context.use(batch.motion))
        if pipe.identity_context is not None:
            if batch.face_tokens is None:
                raise ValueError("the identity module is being trained, but this clip has no face tokens")
            self.enter_context(pipe.identity_context.use(batch.face_tokens.to(pipe.transformer.dtype)))
        return self


class AdapterTrainingModel(torch.nn.Module):
    """The trainable forward as one module (audio projection + DiT with its adapters), for accelerate.

    Wrapping both in one `nn.Module` lets accelerate/DDP see every trainable parameter used in the
    forward. `forward` leaves the conditioning contexts set, because gradient checkpointing recomputes
    blocks during the backward pass and they must see the same audio/motion/face; call `release()`
    after `backward` (the trainer does, in a `finally`).
    """

    def __init__(self, pipe):
        super().__init__()
        self.transformer, self.audio_proj = pipe.transformer, pipe.audio_proj
        object.__setattr__(self, "pipe", pipe)  # not a submodule: only the two above are trained/wrapped
        self._conditions: ExitStack | None = None

    def forward(self, batch: Batch, stage: int, sigma: float, noise: torch.Tensor, lip_weight: float) -> torch.Tensor:
        self.release()
        self._conditions = conditioned(self.pipe, batch, stage)
        self._conditions.__enter__()
        return flow_matching_loss(self.pipe, batch, stage, sigma, noise, lip_weight)

    def release(self) -> None:
        if self._conditions is not None:
            self._conditions.__exit__(None, None, None)
            self._conditions = None
