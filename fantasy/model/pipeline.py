"""`FantasyTalkingPipeline`: diffusers' Wan I2V pipeline with speech conditioning and the release's guidance.

Re-used from `WanImageToVideoPipeline`: prompt encoding (umT5, padded to 512), latent preparation
(first-frame VAE latents + mask), the progress bar and offloading hooks. Owned here: the CLIP
tokens (squash, as the original Wan), the audio path (wav2vec2 -> projection -> windows), the
3-pass text/audio guidance loop, and progressive decoding.
"""

from __future__ import annotations

from fantasy.model import clip_processor  # noqa: F401  (first: diffusers' Wan pipeline looks up CLIP's processor; see there)

# isort: split

from collections.abc import Callable, Iterator
from contextlib import ExitStack

import numpy as np
import torch
from diffusers import WanImageToVideoPipeline
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from fantasy.media.audio import speech_features
from fantasy.media.image import clip_pixel_values
from fantasy.model.adapter import AudioContext, AudioProjModel
from fantasy.model.decode import decode_progressively, decode_release_tiles
from fantasy.model.motion import MOTION_MODULE_MODE, TRAINING_FREE_MODE
from fantasy.model.preview import clean_estimate
from fantasy.model.prompts import DEFAULT_NEGATIVE_PROMPT, MOTIONLESS_PREFIX, WAN_NEGATIVE_PROMPT  # noqa: F401 (re-exported)
from fantasy.model.sampling import combine_guidance, passes_needed, set_official_timesteps
from fantasy.model.windows import split_into_windows

TEXT_LENGTH = 512  # the I2V transformer splits image/text tokens assuming exactly 512 text tokens
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

StepCallback = Callable[[int, int], None]
PreviewCallback = Callable[[int, int, torch.Tensor], None]  # (step, steps, clean estimate x0) -> fantasy.model.preview


def portrait_pixels(image: Image.Image) -> torch.Tensor:
    """[1, 3, H, W] in [-1, 1], as the release computes them: `x * (2/255) - 1` in fp32 (diffusers'
    `(x / 255) * 2 - 1` differs from it in the last bit for 111 of the 256 grey levels)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) * (2 / 255) - 1
    return torch.from_numpy(pixels).permute(2, 0, 1)[None]


class FantasyTalkingPipeline(WanImageToVideoPipeline):
    model_cpu_offload_seq = "text_encoder->image_encoder->audio_encoder->audio_proj->transformer->vae"
    _optional_components = ["transformer", "transformer_2", "image_encoder", "image_processor"]

    def __init__(
        self,
        tokenizer,
        text_encoder,
        vae,
        scheduler,
        image_encoder,
        transformer,
        audio_encoder,
        feature_extractor,
        audio_proj: AudioProjModel,
        image_processor=None,
        transformer_2=None,  # Wan 2.2 only; kept so diffusers' component bookkeeping matches the parent
        boundary_ratio: float | None = None,
        expand_timesteps: bool = False,
    ):
        super().__init__(
            tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
            image_processor=image_processor, image_encoder=image_encoder, transformer=transformer,
            transformer_2=transformer_2, boundary_ratio=boundary_ratio, expand_timesteps=expand_timesteps,
        )
        self.register_modules(audio_encoder=audio_encoder, feature_extractor=feature_extractor, audio_proj=audio_proj)
        self.audio_context: AudioContext | None = None  # set by `install_audio_adapter`
        self.motion_context = None  # `fantasy.model.motion.MotionContext`, when a motion module is installed
        self.identity_context = None  # `fantasy.model.identity.IdentityContext`, when an identity module is installed
        self.batch_guidance = False  # run the guidance passes as one batch (same result, more memory)
        self.few_step_mode = False  # set by `fantasy.speed.distill` with the distilled LoRA's sampler

    @property
    def motion_mode(self) -> str:
        """How the expression/body sliders act on this pipeline (the UI and the result report it)."""
        return MOTION_MODULE_MODE if self.motion_context is not None else TRAINING_FREE_MODE

    # ---- conditioning -------------------------------------------------------------------------

    @torch.no_grad()
    def encode_image_tokens(self, image: Image.Image) -> torch.Tensor:
        """CLIP penultimate hidden states [1, N, hidden] of the squashed portrait."""
        config = self.image_encoder.config
        mean = getattr(self.image_processor, "image_mean", None) or CLIP_MEAN
        std = getattr(self.image_processor, "image_std", None) or CLIP_STD
        pixels = clip_pixel_values(image, config.image_size, mean, std)
        param = next(self.image_encoder.parameters())
        hidden = self.image_encoder(pixel_values=pixels.to(param.device, param.dtype), output_hidden_states=True)
        return hidden.hidden_states[-2]

    @torch.no_grad()
    def project_audio(self, samples: np.ndarray) -> torch.Tensor:
        """Speech samples -> wav2vec2 features -> `AudioProjModel`: [1, L, C] at 50 tokens per second."""
        features = speech_features(self.audio_encoder, self.feature_extractor, samples)
        param = next(self.audio_proj.parameters())
        return self.audio_proj(features.to(param.device, param.dtype))

    def encode_audio(self, samples: np.ndarray, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Speech samples (already cut to the clip) -> (windows [1, T_lat, W, C], valid lengths [T_lat])."""
        return split_into_windows(self.project_audio(samples), num_frames)

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """[1, 3, F, H, W] in [-1, 1] -> normalised fp32 VAE latents [1, 16, T_lat, H/8, W/8] (mode, (z - mean) / std).

        The latents the DiT works in: the condition is built from them, and training targets are them.
        """
        vae_device = next(self.vae.parameters()).device
        latent = self.vae.encode(video.to(vae_device, self.vae.dtype)).latent_dist.mode()
        mean = torch.tensor(self.vae.config.latents_mean).view(1, -1, 1, 1, 1).to(latent.device, torch.float32)
        std = torch.tensor(self.vae.config.latents_std).view(1, -1, 1, 1, 1).to(latent.device, torch.float32)
        return (latent.float() - mean) / std

    @torch.no_grad()
    def prepare_condition(self, first_frames: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Wan I2V conditioning (4 mask channels + 16 latent channels) with K known leading frames.

        `first_frames` [1, 3, K, H, W] in [-1, 1]: K = 1 is the portrait (the release, identical to
        diffusers' `prepare_latents`); K = 1 + 4j are a previous window's last frames (motion frames)
        for long videos. Known frames get mask 1, the rest 0, in Wan's 4-frames-per-latent layout.
        """
        _, _, known, height, width = first_frames.shape
        video = torch.cat([first_frames, first_frames.new_zeros(1, 3, num_frames - known, height, width)], dim=2)
        latent = self.encode_video(video)
        t_scale = self.vae_scale_factor_temporal
        mask = torch.zeros(1, 1, num_frames, latent.shape[3], latent.shape[4], device=latent.device)
        mask[:, :, :known] = 1
        mask = torch.cat([mask[:, :, :1].repeat_interleave(t_scale, dim=2), mask[:, :, 1:]], dim=2)
        mask = mask.view(1, -1, t_scale, latent.shape[3], latent.shape[4]).transpose(1, 2)
        return torch.cat([mask, latent], dim=1)

    # ---- denoising ----------------------------------------------------------------------------

    def _predict(self, name: str, latent_input, timestep, text, image_tokens, windows, lengths, audio_weight):
        scale = audio_weight if name == "full" else 0.0
        with self.transformer.cache_context(name), self.audio_context.use(windows, lengths, scale):
            return self.transformer(
                hidden_states=latent_input, timestep=timestep, encoder_hidden_states=text,
                encoder_hidden_states_image=image_tokens, return_dict=False,
            )[0].float()

    def guided_velocity(
        self, latent_input, timestep, prompt_embeds, negative_embeds, image_tokens, windows, lengths,
        text_guidance_scale: float, audio_guidance_scale: float, audio_weight: float,
    ) -> torch.Tensor:
        """One step's velocity: full / text-only / uncond passes combined by the release's formula.

        With `batch_guidance` on, the passes run as one batch (per-sample audio weight [w, 0, 0]): the
        same arithmetic with fewer, larger kernels, which pays off on a GPU with memory to spare.
        The passes are combined in fp32 whatever the DiT returns (the release combines fp32 outputs; a
        bf16 combination would round `cfg * (t - u)` to bf16), and the result is fp32.
        """
        names = passes_needed(text_guidance_scale, audio_guidance_scale)
        texts = [negative_embeds if name == "uncond" else prompt_embeds for name in names]
        if self.batch_guidance and len(names) > 1:
            scales = torch.tensor([audio_weight if name == "full" else 0.0 for name in names])
            with self.transformer.cache_context("batched"), self.audio_context.use(windows, lengths, scales):
                out = self.transformer(
                    hidden_states=latent_input.expand(len(names), -1, -1, -1, -1),
                    timestep=timestep.expand(len(names)), encoder_hidden_states=torch.cat(texts),
                    encoder_hidden_states_image=image_tokens.expand(len(names), -1, -1), return_dict=False,
                )[0]
            preds = dict(zip(names, out.float().split(1), strict=True))
        else:
            preds = {
                name: self._predict(name, latent_input, timestep, text, image_tokens, windows, lengths, audio_weight)
                for name, text in zip(names, texts, strict=True)
            }
        return combine_guidance(preds, text_guidance_scale, audio_guidance_scale)

    @torch.no_grad()
    def __call__(
        self,
        image: Image.Image,
        audio_windows: torch.Tensor,
        audio_lengths: torch.Tensor,
        prompt: str,
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
        num_frames: int = 81,
        num_inference_steps: int = 30,
        text_guidance_scale: float = 5.0,
        audio_guidance_scale: float = 5.0,
        audio_weight: float = 1.0,
        generator: torch.Generator | None = None,
        step_callback: StepCallback | None = None,
        motion_frames: torch.Tensor | None = None,
        motion: tuple[float, float] | None = None,
        face_image: Image.Image | None = None,
        identity_scale: float = 1.0,
        preview_callback: PreviewCallback | None = None,
    ) -> torch.Tensor:
        """Denoise and return normalised latents [1, 16, T_lat, H/8, W/8]; decode with `decode_frames`.

        `image` must already be at its final size (sides multiples of 16); use `fantasy.media.image.resize_portrait`.
        It always gives the CLIP identity tokens; `motion_frames` ([1, 3, K, H, W] in [-1, 1]) replace it as
        the known leading frames of a continuation window. `motion` (expression, body in [0, 1]) feeds the
        motion module and `face_image` (a square face crop) the identity module; each needs its module
        installed (`fantasy.weights.trained_modules`), and an installed identity module needs the face.
        `preview_callback(step, steps, x0)` gets each step's clean-latent estimate `x_t - sigma_t * v` (fp32,
        normalised like the result) after the scheduler step; `fantasy.model.preview.LivePreview` makes one.
        """
        if self.audio_context is None:
            raise RuntimeError("install the audio adapter first (fantasy.model.adapter.install_audio_adapter)")
        if motion is not None and self.motion_context is None:
            raise ValueError("motion coefficients given, but no motion module is installed")
        if self.identity_context is not None and face_image is None:
            raise ValueError("this pipeline has an identity module: pass the portrait's face crop as face_image")
        if face_image is not None and self.identity_context is None:
            raise ValueError("face_image given, but no identity module is installed")
        width, height = image.size
        if width % 16 or height % 16:
            raise ValueError(f"image sides must be multiples of 16, got {width}x{height}")
        device = self._execution_device
        dtype = self.transformer.dtype
        need_negative = text_guidance_scale != 1.0
        prompt_embeds, negative_embeds = self.encode_prompt(
            prompt=prompt, negative_prompt=negative_prompt, do_classifier_free_guidance=need_negative,
            max_sequence_length=TEXT_LENGTH, device=device, dtype=dtype,
        )
        image_tokens = self.encode_image_tokens(image).to(device, dtype)
        windows = audio_windows.to(device, dtype)
        lengths = audio_lengths.to(device)

        if motion_frames is None:
            motion_frames = portrait_pixels(image)[:, :, None]
        condition = self.prepare_condition(motion_frames.float(), num_frames).to(device)
        shape = (1, self.vae.config.z_dim, condition.shape[2], height // self.vae_scale_factor_spatial,
                 width // self.vae_scale_factor_spatial)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        if windows.shape[1] != latents.shape[2]:
            raise ValueError(f"{windows.shape[1]} audio windows for {latents.shape[2]} latent frames")

        timesteps = set_official_timesteps(self.scheduler, num_inference_steps, device)
        self._forget_cached_steps()
        with ExitStack() as conditions, self.progress_bar(total=len(timesteps)) as progress:
            if self.motion_context is not None:
                conditions.enter_context(self.motion_context.use(motion))
            if face_image is not None:
                face_tokens = self.encode_image_tokens(face_image).to(device, dtype)
                conditions.enter_context(self.identity_context.use(face_tokens, identity_scale))
            for i, t in enumerate(timesteps):
                self._current_timestep = t
                latent_input = torch.cat([latents, condition], dim=1).to(dtype)
                velocity = self.guided_velocity(
                    latent_input, t.expand(1), prompt_embeds, negative_embeds, image_tokens, windows, lengths,
                    text_guidance_scale, audio_guidance_scale, audio_weight,
                )
                # fp32 velocity -> fp32 latents (diffusers' step casts its result to the velocity's dtype).
                # The same x0 both samplers compute: its preview costs one fused op here (fantasy.model.preview).
                x0 = clean_estimate(latents, velocity, self.scheduler.sigmas[i]) if preview_callback else None
                # The generator only matters to a stochastic sampler (the few-step mode's re-noising).
                latents = self.scheduler.step(velocity, t, latents, generator=generator, return_dict=False)[0]
                progress.update()
                if preview_callback is not None:
                    preview_callback(i + 1, len(timesteps), x0)
                if step_callback is not None:
                    step_callback(i + 1, len(timesteps))
        self._current_timestep = None
        return latents

    def _forget_cached_steps(self) -> None:
        """Drop a step cache's state (per-pass residuals) left by an earlier run: each run starts clean."""
        if getattr(self.transformer, "is_cache_enabled", False):
            from diffusers.hooks import HookRegistry

            HookRegistry.check_if_exists_or_initialize(self.transformer).reset_stateful_hooks()

    def decode_frames(self, latents: torch.Tensor, release: bool = False) -> Iterator[np.ndarray]:
        """uint8 frames, a latent frame's worth at a time (1 then 4 each), as the causal VAE produces them.

        `release`: the release's tiled decode and truncation (`fantasy.model.decode.decode_release_tiles`).
        """
        try:
            yield from (decode_release_tiles if release else decode_progressively)(self.vae, latents)
        finally:
            self.maybe_free_model_hooks()
