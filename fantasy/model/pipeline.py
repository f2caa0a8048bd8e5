"""`FantasyTalkingPipeline`: diffusers' Wan I2V pipeline with speech conditioning and the release's guidance.

`pipe(image=..., audio=...)` is a diffusers call: portrait and speech in (paths, PIL images or arrays), frames
out (`output_type`, `return_dict`, `callback_on_step_end`), long speech in consecutive windows. Re-used from
`WanImageToVideoPipeline`: prompt encoding (umT5, padded to 512), latent preparation (first-frame VAE latents
+ mask), the progress bar and offloading hooks. Owned here: the CLIP tokens (squash, as the original Wan), the
audio path (wav2vec2 -> projection -> windows), the 3-pass text/audio guidance loop (`denoise`, one window),
the windows of long speech, and progressive decoding.
"""

from __future__ import annotations

from fantasy.model import clip_processor  # noqa: F401  (first: diffusers' Wan pipeline looks up CLIP's processor; see there)

# isort: split

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import torch
from diffusers import WanImageToVideoPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from fantasy.errors import InvalidSetting
from fantasy.media.audio import SAMPLE_RATE, clip_samples, speech_features
from fantasy.media.image import clip_pixel_values
from fantasy.model.adapter import AudioContext, AudioProjModel, audio_processors, install_audio_adapter
from fantasy.model.call_inputs import frames_for, portrait_from, speech_from
from fantasy.model.decode import decode_progressively, decode_release_tiles
from fantasy.model.identity import portrait_face_crop
from fantasy.model.long_video import MOTION_FRAMES, FrameStitcher, plan_windows
from fantasy.model.motion import MOTION_MODULE_MODE, MOTION_MODULE_NAME, TRAINING_FREE_MODE
from fantasy.model.pipeline_output import OUTPUT_TYPES, FantasyTalkingPipelineOutput, format_frames
from fantasy.model.precision import DEFAULT_PRECISION, apply_precision, compute_dtype_of, is_quantized_weight
from fantasy.model.preview import clean_estimate
from fantasy.model.prompts import (  # noqa: F401 (MOTIONLESS_PREFIX, WAN_NEGATIVE_PROMPT re-exported)
    DEFAULT_NEGATIVE_PROMPT,
    DEFAULT_PROMPT,
    MOTIONLESS_PREFIX,
    WAN_NEGATIVE_PROMPT,
    default_prompt,
)
from fantasy.model.release_check import check_release_pipeline
from fantasy.model.sampling import DEFAULT_STEPS, combine_guidance, passes_needed, set_official_timesteps
from fantasy.model.saved_adapter import FantasyTalkingAdapter, install_adapter
from fantasy.model.windows import split_into_windows

TEXT_LENGTH = 512  # the I2V transformer splits image/text tokens assuming exactly 512 text tokens
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
DEFAULT_FPS = 23  # the release's
WINDOW_FRAMES = 81  # the release's clip: frames per window
DEFAULT_LONGEST_EDGE = 512  # the release's image size


def portrait_pixels(image: Image.Image) -> torch.Tensor:
    """[1, 3, H, W] in [-1, 1], as the release computes them: `x * (2/255) - 1` in fp32 (diffusers'
    `(x / 255) * 2 - 1` differs from it in the last bit for 111 of the 256 grey levels)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) * (2 / 255) - 1
    return torch.from_numpy(pixels).permute(2, 0, 1)[None]


def align_cpu_tensors(module: torch.nn.Module, alignment: int = 64) -> None:
    """Copy CPU weights that sit at unaligned addresses (safetensors' memory map leaves some at their file offset).

    CPU kernels take another path for unaligned operands, so the same weights would compute a last bit differently
    from a model built in memory (measured: 1.3e-7 on a time-embedder linear); copied, a saved and reloaded pipeline
    gives the same video bit for bit.
    """
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.device.type == "cpu" and tensor.data_ptr() % alignment:
            tensor.data = tensor.data.clone()


def clip_token_count(image_encoder_config) -> int:
    """CLIP tokens per image: patches plus the class token (257 for ViT-H/14 at 224 px)."""
    return (image_encoder_config.image_size // image_encoder_config.patch_size) ** 2 + 1


def frames_to_pixels(frames: np.ndarray) -> torch.Tensor:
    """uint8 [K, H, W, 3] -> [1, 3, K, H, W] in [-1, 1] (a continuation window's motion frames)."""
    return torch.from_numpy(frames).float().div(127.5).sub(1.0).permute(3, 0, 1, 2)[None]


class FantasyTalkingPipeline(WanImageToVideoPipeline):
    model_cpu_offload_seq = "text_encoder->image_encoder->audio_encoder->audio_proj->transformer->vae"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "x0"]
    # `audio_adapter`: a saved folder's per-block modules (`fantasy.model.saved_adapter`); always None once built.
    _optional_components = ["transformer", "transformer_2", "image_encoder", "image_processor", "audio_adapter"]

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
        audio_adapter: FantasyTalkingAdapter | None = None,
        image_processor=None,
        transformer_2=None,  # Wan 2.2 only; kept so diffusers' component bookkeeping matches the parent
        boundary_ratio: float | None = None,
        expand_timesteps: bool = False,
        default_longest_edge: int = DEFAULT_LONGEST_EDGE,
    ):
        super().__init__(
            tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
            image_processor=image_processor, image_encoder=image_encoder, transformer=transformer,
            transformer_2=transformer_2, boundary_ratio=boundary_ratio, expand_timesteps=expand_timesteps,
        )
        # The adapter's modules live in the transformer at run time; `audio_adapter` only carries a saved folder's.
        self.register_modules(audio_encoder=audio_encoder, feature_extractor=feature_extractor, audio_proj=audio_proj,
                              audio_adapter=None)
        self.register_to_config(default_longest_edge=default_longest_edge)  # the portrait's size unless a call says
        self.audio_context: AudioContext | None = None  # the audio processors' shared context, once installed
        self.motion_context = None  # `fantasy.model.motion.MotionContext`, when a motion module is installed
        self.identity_context = None  # `fantasy.model.identity.IdentityContext`, when an identity module is installed
        if transformer is not None and audio_proj is not None and image_encoder is not None:
            self.audio_context = self._install_audio_processors()
            if audio_adapter is not None:
                install_adapter(self, audio_adapter)
        self.batch_guidance = False  # run the guidance passes as one batch (same result, more memory)
        self.few_step_mode = False  # set by `fantasy.speed.distill` with the distilled LoRA's sampler
        self._window = (0, 1)  # (window being denoised, windows): `window_index`, `num_windows`
        self._interrupt = False

    def _install_audio_processors(self) -> AudioContext:
        """The (zero) audio processor on every cross-attention, or the ones a transformer already has."""
        try:
            return audio_processors(self.transformer)[0].audio
        except RuntimeError:  # not installed yet
            return install_audio_adapter(self.transformer, context_dim=self.audio_proj.config.context_dim,
                                         num_image_tokens=clip_token_count(self.image_encoder.config))

    def set_precision(self, precision: str = DEFAULT_PRECISION) -> None:
        """The adapter computes in the DiT blocks' dtype, and the DiT follows `precision` (`fantasy.model.precision`).
        Set it before anything else hooks the transformer (offloading, step cache, compilation)."""
        compute_dtype = compute_dtype_of(self.transformer)
        for processor in audio_processors(self.transformer):
            processor.to(compute_dtype)
        apply_precision(self.transformer, precision, compute_dtype)

    # ---- a diffusers folder ----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, precision: str = DEFAULT_PRECISION, **kwargs):
        """diffusers' `from_pretrained` over a folder `save_pretrained` (or `fantasy convert --diffusers`) wrote.

        One `dtype` (or `torch_dtype`) is the DiT's and umT5's compute dtype; the VAE, CLIP, wav2vec2 and the
        audio projection load in fp32, as the release runs them (a dict chooses per component, as in diffusers).
        The adapter's saved modules go back into the transformer, then the DiT's `precision` policy is set.
        """
        for name in ("dtype", "torch_dtype"):
            if isinstance(kwargs.get(name), torch.dtype):
                kwargs[name] = {"transformer": kwargs[name], "text_encoder": kwargs[name], "default": torch.float32}
        pipe = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                align_cpu_tensors(component)
        pipe.set_precision(precision)
        return pipe

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """diffusers' `save_pretrained`: every component in its folder with `model_index.json`; the transformer as
        Wan's alone (loadable by `WanTransformer3DModel`), the adapter's per-block modules in `audio_adapter/`."""
        quantized = sorted({type(p).__name__ if type(p) is not torch.nn.Parameter else str(p.dtype)
                            for p in self.transformer.parameters() if is_quantized_weight(p)})
        if quantized:
            raise InvalidSetting(f"save_pretrained writes the DiT's weights as they are, and these are quantized "
                                 f"({', '.join(quantized)}): load the bf16 DiT (--dit bf16) to write a diffusers folder")
        with self._adapter_as_component():
            super().save_pretrained(save_directory, *args, **kwargs)

    @contextmanager
    def _adapter_as_component(self):
        """For the length of a save: the adapter's modules out of the transformer, into an `audio_adapter` component
        (sharing their tensors); everything back as it was afterwards, whatever happens."""
        from diffusers.models.transformers.transformer_wan import WanAttnProcessor

        adapter = FantasyTalkingAdapter.from_transformer(self.transformer)
        processors = audio_processors(self.transformer)
        motion = self.transformer._modules.pop(MOTION_MODULE_NAME, None)
        try:
            for block in self.transformer.blocks:
                block.attn2.set_processor(WanAttnProcessor())
            self.register_modules(audio_adapter=adapter)
            yield
        finally:
            self.register_modules(audio_adapter=None)
            for block, processor in zip(self.transformer.blocks, processors, strict=True):
                block.attn2.set_processor(processor)
            if motion is not None:
                self.transformer.add_module(MOTION_MODULE_NAME, motion)

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

    # ---- the diffusers call -------------------------------------------------------------------------

    @property
    def window_index(self) -> int:
        """Which window of the video is being denoised (0-based; long speech runs several, `fantasy.model.long_video`)."""
        return self._window[0]

    @property
    def num_windows(self) -> int:
        return self._window[1]

    @torch.no_grad()
    def __call__(
        self,
        image: Image.Image | np.ndarray | torch.Tensor | str | Path,
        audio: str | Path | np.ndarray | torch.Tensor,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        sampling_rate: int | None = None,
        height: int | None = None,
        width: int | None = None,
        longest_edge: int | None = None,
        num_frames: int | None = None,
        fps: float = DEFAULT_FPS,
        window_frames: int = WINDOW_FRAMES,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float = 5.0,
        audio_guidance_scale: float = 5.0,
        audio_weight: float = 1.0,
        generator: torch.Generator | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        motion: tuple[float, float] | None = None,
        face_image: Image.Image | None = None,
        identity_scale: float = 1.0,
        release: bool = False,
        output_type: str | None = "np",
        return_dict: bool = True,
        on_frames: Callable[[np.ndarray], None] | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> FantasyTalkingPipelineOutput | tuple:
        """A talking video of `image` speaking `audio`.

        image: a path, PIL image or array; resized as the release does (LANCZOS to `longest_edge`, default
            `config.default_longest_edge`, sides rounded up to multiples of 16), or to `height` x `width`.
        audio: a speech file, or samples with their `sampling_rate` ([n], [channels, n] or [n, channels]).
        prompt / negative_prompt: default "A person is talking." (release: "A woman is talking.") and the
            release's negative prompt; or `prompt_embeds` / `negative_prompt_embeds` from `encode_prompt`.
        num_frames: 4k+1; default: the whole speech at `fps` (the release's rule, `int(fps*d // 4)*4 + 5`).
            More than `window_frames` (81, the release's clip) runs consecutive windows chained by 5 motion frames
            (`fantasy.model.long_video`), each with the speech at its absolute time.
        guidance_scale / audio_guidance_scale: the release's text and audio guidance (3 passes a step);
            audio_weight: the adapter's output scale.
        motion: (expression, body) in [0, 1] for a trained motion module; face_image: the identity module's
            face crop (default: cropped from the portrait by the face backend); identity_scale: its strength.
        release: the official `infer.py`'s clip exactly: one window of at most `window_frames`, the release's
            tiled decode and truncation; refuses a pipeline that would compute something else.
        output_type: "np", "pt", "pil", "latent" or None (frames only to `on_frames`: long videos written as
            they are decoded, without holding them); see `FantasyTalkingPipelineOutput`.
        on_frames: called with each decoded chunk, uint8 [n, H, W, 3] (1 frame, then 4 per latent frame), in order.
        callback_on_step_end: diffusers' contract: `(pipe, step, timestep, tensors) -> dict`; `tensors` holds the
            names in `callback_on_step_end_tensor_inputs` (`_callback_tensor_inputs`: latents, prompt_embeds,
            negative_prompt_embeds, and x0, the step's clean-latent estimate); a returned latents / embeddings
            replace the pipeline's. `pipe.window_index`, `pipe.num_windows`, `pipe.num_timesteps` say where it is;
            setting `pipe._interrupt = True` stops after the current step (no further windows).
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        self._check_call(output_type, callback_on_step_end_tensor_inputs, motion, face_image)
        self._interrupt = False
        if release:
            check_release_pipeline(self, demo=True)  # the DiT's dtype is the caller's (the release's is bf16)
        portrait = portrait_from(image, height, width, longest_edge or self.config.default_longest_edge)
        # A file is decoded only as far as the video can use (plus a margin): the whole speech by default.
        limit = num_frames / fps if num_frames is not None else window_frames / fps if release else None
        speech = speech_from(audio, sampling_rate, limit)
        num_frames = frames_for(speech.duration_s, fps, num_frames, window_frames, release)
        if self.identity_context is not None and face_image is None:
            face_image = portrait_face_crop(portrait)
        windows = plan_windows(num_frames, window_frames)
        audio_for = self._audio_windows(speech.samples, num_frames, fps, single_clip=len(windows) == 1)

        device = self._execution_device
        self._guidance_scale = guidance_scale
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt=default_prompt(release) if prompt is None and prompt_embeds is None else prompt,
            negative_prompt=DEFAULT_NEGATIVE_PROMPT if negative_prompt is None else negative_prompt,
            do_classifier_free_guidance=guidance_scale != 1.0, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, max_sequence_length=TEXT_LENGTH, device=device,
            dtype=self.transformer.dtype,
        )
        stitcher = FrameStitcher()
        decoded: list[np.ndarray] = []
        latents_out: list[torch.Tensor] = []
        for index, window in enumerate(windows):
            self._window = (index, len(windows))
            audio_windows, audio_lengths = audio_for(window)
            motion_frames = stitcher.motion_frames(window)
            latents = self.denoise(
                portrait, audio_windows, audio_lengths, num_frames=window.length,
                num_inference_steps=num_inference_steps, text_guidance_scale=guidance_scale,
                audio_guidance_scale=audio_guidance_scale, audio_weight=audio_weight, generator=generator,
                motion_frames=None if motion_frames is None else frames_to_pixels(motion_frames), motion=motion,
                face_image=face_image, identity_scale=identity_scale, prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_prompt_embeds, callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            )
            last = index == len(windows) - 1 or self.interrupt
            if output_type == "latent":
                latents_out.append(latents)
                if not last:  # the next window starts from this one's last frames
                    for _ in stitcher.add(window, self.decode_frames(latents, release)):
                        pass
            else:
                for frames in stitcher.add(window, self.decode_frames(latents, release)):
                    if on_frames is not None:
                        on_frames(frames)
                    if output_type is not None:
                        decoded.append(frames)
            if self.interrupt:
                break
        self._window = (0, 1)
        self.maybe_free_model_hooks()

        if output_type == "latent":
            frames_out = latents_out[0] if len(windows) == 1 else latents_out
        elif output_type is None:
            frames_out = None
        else:
            frames_out = format_frames(np.concatenate(decoded), output_type)
        used = clip_samples(speech.samples, num_frames, fps)
        if not return_dict:
            return (frames_out, used)
        return FantasyTalkingPipelineOutput(frames=frames_out, audio=used, sampling_rate=SAMPLE_RATE, fps=fps,
                                            output_type=output_type)

    def _check_call(self, output_type, tensor_inputs, motion, face_image) -> None:
        if self.audio_context is None:
            raise RuntimeError("install the audio adapter first (fantasy.model.adapter.install_audio_adapter)")
        if output_type not in OUTPUT_TYPES:
            raise InvalidSetting(f"output_type must be one of {', '.join(map(repr, OUTPUT_TYPES))}, got {output_type!r}")
        unknown = [name for name in tensor_inputs if name not in self._callback_tensor_inputs]
        if unknown:
            raise InvalidSetting(f"callback_on_step_end_tensor_inputs can name {', '.join(self._callback_tensor_inputs)}; "
                                 f"got {', '.join(unknown)}")
        if motion is not None and self.motion_context is None:
            raise InvalidSetting("motion coefficients need trained motion-module weights (see README, Training)")
        if face_image is not None and self.identity_context is None:
            raise InvalidSetting("face_image given, but no identity module is installed")

    def _audio_windows(self, speech: np.ndarray, num_frames: int, fps: float, single_clip: bool):
        """Window -> (audio windows, valid lengths).

        One clip: the release's path (features of `[0, num_frames/fps)`, rate `L / num_frames`). Long video:
        features of the whole track zero-padded to the video's length, so every latent frame's tokens are
        the ones at its absolute time, whichever window it falls in.
        """
        if single_clip:
            encoded = self.encode_audio(clip_samples(speech, num_frames, fps), num_frames)
            return lambda window: encoded
        length = int(num_frames / fps * SAMPLE_RATE)
        samples = np.zeros(length, dtype=np.float32)
        used = speech[:length]
        samples[: len(used)] = used
        tokens = self.project_audio(samples)
        rate = tokens.shape[1] / num_frames
        return lambda window: split_into_windows(tokens, window.length, start_frame=window.start, tokens_per_frame=rate)

    def decode_latents(self, latents: torch.Tensor | list[torch.Tensor], output_type: str = "np",
                       release: bool = False):
        """The frames of an `output_type="latent"` result (one window's latents, or the list of a long video's),
        in `output_type`: the same frames the call would have returned (`release`: the release's decode)."""
        windows_latents = [latents] if isinstance(latents, torch.Tensor) else list(latents)
        lengths = [4 * (w.shape[2] - 1) + 1 for w in windows_latents]
        total = lengths[0] + sum(length - MOTION_FRAMES for length in lengths[1:])
        windows = plan_windows(total, lengths[0])
        if [w.length for w in windows] != lengths:
            raise InvalidSetting(f"these latents are not the windows of one video (window lengths {lengths})")
        stitcher = FrameStitcher()
        frames = [chunk for window, window_latents in zip(windows, windows_latents, strict=True)
                  for chunk in stitcher.add(window, self.decode_frames(window_latents, release))]
        return format_frames(np.concatenate(frames), output_type)

    # ---- one window's denoising loop ------------------------------------------------------------------

    @torch.no_grad()
    def denoise(
        self,
        image: Image.Image,
        audio_windows: torch.Tensor,
        audio_lengths: torch.Tensor,
        prompt: str | None = None,
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
        num_frames: int = WINDOW_FRAMES,
        num_inference_steps: int = DEFAULT_STEPS,
        text_guidance_scale: float = 5.0,
        audio_guidance_scale: float = 5.0,
        audio_weight: float = 1.0,
        generator: torch.Generator | None = None,
        motion_frames: torch.Tensor | None = None,
        motion: tuple[float, float] | None = None,
        face_image: Image.Image | None = None,
        identity_scale: float = 1.0,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> torch.Tensor:
        """One window's denoising: normalised latents [1, 16, T_lat, H/8, W/8] (the building block of `__call__`;
        decode with `decode_frames`).

        `image` must already be at its final size (sides multiples of 16); it always gives the CLIP identity
        tokens, and the known first frame unless `motion_frames` ([1, 3, K, H, W] in [-1, 1]) replace it as the
        known leading frames of a continuation window. `audio_windows` / `audio_lengths` come from `encode_audio`.
        `motion` (expression, body in [0, 1]) feeds the motion module and `face_image` (a square face crop) the
        identity module; each needs its module installed, and an installed identity module needs the face.
        `callback_on_step_end` as in `__call__` (its `x0` is `x_t - sigma_t * v`, fp32, normalised like the result).
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
            prompt=(DEFAULT_PROMPT if prompt is None else prompt) if prompt_embeds is None else None,
            negative_prompt=negative_prompt,
            do_classifier_free_guidance=need_negative, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, max_sequence_length=TEXT_LENGTH, device=device, dtype=dtype,
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
        self._num_timesteps = len(timesteps)
        want_x0 = callback_on_step_end is not None and "x0" in callback_on_step_end_tensor_inputs
        self._forget_cached_steps()
        with ExitStack() as conditions, self.progress_bar(total=len(timesteps)) as progress:
            if self.motion_context is not None:
                conditions.enter_context(self.motion_context.use(motion))
            if face_image is not None:
                face_tokens = self.encode_image_tokens(face_image).to(device, dtype)
                conditions.enter_context(self.identity_context.use(face_tokens, identity_scale))
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                self._current_timestep = t
                latent_input = torch.cat([latents, condition], dim=1).to(dtype)
                velocity = self.guided_velocity(
                    latent_input, t.expand(1), prompt_embeds, negative_embeds, image_tokens, windows, lengths,
                    text_guidance_scale, audio_guidance_scale, audio_weight,
                )
                # fp32 velocity -> fp32 latents (diffusers' step casts its result to the velocity's dtype).
                # The same x0 both samplers compute: its preview costs one fused op here (fantasy.model.preview).
                x0 = clean_estimate(latents, velocity, self.scheduler.sigmas[i]) if want_x0 else None
                # The generator only matters to a stochastic sampler (the few-step mode's re-noising).
                latents = self.scheduler.step(velocity, t, latents, generator=generator, return_dict=False)[0]
                progress.update()
                if callback_on_step_end is not None:
                    tensors = {"latents": latents, "prompt_embeds": prompt_embeds,
                               "negative_prompt_embeds": negative_embeds, "x0": x0}
                    outputs = callback_on_step_end(
                        self, i, t, {name: tensors[name] for name in callback_on_step_end_tensor_inputs}) or {}
                    latents = outputs.pop("latents", latents)
                    prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                    negative_embeds = outputs.pop("negative_prompt_embeds", negative_embeds)
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
