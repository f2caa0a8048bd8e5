"""The pipeline on the tiny preset: guidance passes, determinism, steps, progressive decoding."""

import numpy as np
import pytest
import torch
from PIL import Image

from fantasy.media.audio import clip_samples
from fantasy.media.image import resize_portrait
from fantasy.model.decode import decode_progressively, denormalize_latents, to_uint8_frames

from .conftest import EXAMPLE_IMAGE, speech_like

SIZE = 64


@pytest.fixture(scope="module")
def conditioning(tiny_pipe):
    speech = speech_like(1.0)
    num_frames = 25  # 1 s at 23 fps: int(23 // 4)*4 + 5 frames -> 7 latent frames
    windows, lengths = tiny_pipe.encode_audio(clip_samples(speech, num_frames, 23), num_frames)
    image = resize_portrait(Image.open(EXAMPLE_IMAGE).convert("RGB"), SIZE)
    return image, windows, lengths, num_frames


def run(pipe, conditioning, seed=3, steps=2, **kw):
    image, windows, lengths, num_frames = conditioning
    return pipe.denoise(image, windows, lengths, "a person is talking", num_frames=num_frames, num_inference_steps=steps,
                generator=torch.Generator().manual_seed(seed), **kw)


def test_audio_windows_shape(conditioning):
    _, windows, lengths, num_frames = conditioning
    assert num_frames == 25
    assert windows.shape[:2] == (1, 7)
    assert lengths.shape == (7,)


class CallRecorder:
    """Wraps the transformer to record each pass's audio scale and text, and its output."""

    def __init__(self, pipe):
        self.pipe, self.calls = pipe, []
        self.original = pipe.transformer.forward

    def __enter__(self):
        def forward(*args, **kwargs):
            out = self.original(*args, **kwargs)
            ctx = self.pipe.audio_context
            self.calls.append({"scale": ctx.scale, "text": kwargs["encoder_hidden_states"], "out": out[0]})
            return out

        self.pipe.transformer.forward = forward
        return self

    def __exit__(self, *exc):
        self.pipe.transformer.forward = self.original


def test_three_pass_guidance_equals_hand_computation(tiny_pipe, conditioning):
    image, windows, lengths, num_frames = conditioning
    latents = torch.randn(1, 36, 7, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 512, 32, generator=torch.Generator().manual_seed(1))
    negative = torch.randn(1, 512, 32, generator=torch.Generator().manual_seed(2))
    image_tokens = tiny_pipe.encode_image_tokens(image)
    t = torch.tensor([900.0])
    with CallRecorder(tiny_pipe) as rec, torch.no_grad():
        v = tiny_pipe.guided_velocity(latents, t, text, negative, image_tokens, windows, lengths, 5.0, 4.0, 1.3)
    assert [c["scale"] for c in rec.calls] == [1.3, 0.0, 0.0]
    assert [c["text"] is negative for c in rec.calls] == [False, False, True]
    # Hand computation with direct transformer calls.
    with torch.no_grad():
        def call(txt, scale):
            with tiny_pipe.audio_context.use(windows, lengths, scale):
                return tiny_pipe.transformer(latents, t, txt, image_tokens, return_dict=False)[0]

        f, tx, u = call(text, 1.3), call(text, 0.0), call(negative, 0.0)
    assert torch.equal(v, u + 5.0 * (tx - u) + 4.0 * (f - tx))
    assert not torch.equal(f, tx)  # the audio really enters the full pass


@pytest.mark.slow
def test_two_passes_when_text_guidance_is_one(tiny_pipe, conditioning):
    with CallRecorder(tiny_pipe) as rec:
        run(tiny_pipe, conditioning, steps=2, text_guidance_scale=1.0, audio_guidance_scale=4.0)
    assert [c["scale"] for c in rec.calls] == [1.0, 0.0] * 2
    full, text = rec.calls[0]["out"], rec.calls[1]["out"]
    assert not torch.equal(full, text)


@pytest.mark.slow
def test_steps_are_honoured_and_reported(tiny_pipe, conditioning):
    seen = []

    def callback(pipe, step, timestep, tensors):
        seen.append((step, pipe.num_timesteps, float(timestep), sorted(tensors)))
        return {}

    with CallRecorder(tiny_pipe) as rec:
        run(tiny_pipe, conditioning, steps=3, callback_on_step_end=callback)
    timesteps = [float(t) for t in tiny_pipe.scheduler.timesteps]
    assert seen == [(i, 3, timesteps[i], ["latents"]) for i in range(3)]
    assert len(rec.calls) == 9


@pytest.mark.slow
def test_same_seed_same_latents_other_seed_differs(tiny_pipe, conditioning):
    a = run(tiny_pipe, conditioning, seed=11)
    b = run(tiny_pipe, conditioning, seed=11)
    c = run(tiny_pipe, conditioning, seed=12)
    assert a.shape == (1, 16, 7, SIZE // 8, SIZE // 8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.slow
def test_rebuilding_the_tiny_preset_gives_identical_frames(tiny_pipe, conditioning):
    from fantasy.weights.presets import load_pipeline

    other = load_pipeline("tiny")
    frames_a = np.concatenate(list(tiny_pipe.decode_frames(run(tiny_pipe, conditioning))))
    frames_b = np.concatenate(list(other.decode_frames(run(other, conditioning))))
    assert frames_a.shape == (25, SIZE, SIZE, 3)
    assert np.array_equal(frames_a, frames_b)


@pytest.mark.slow
def test_speech_changes_the_video(tiny_pipe, conditioning):
    image, windows, lengths, num_frames = conditioning
    a = run(tiny_pipe, conditioning)
    b = run(tiny_pipe, (image, windows.flip(1), lengths.flip(0), num_frames))
    assert not torch.equal(a, b)


@pytest.mark.slow
def test_progressive_decode_equals_full_decode(tiny_pipe, conditioning):
    latents = run(tiny_pipe, conditioning)
    chunks = list(decode_progressively(tiny_pipe.vae, latents))
    assert [len(c) for c in chunks] == [1] + [4] * 6
    with torch.no_grad():
        full = tiny_pipe.vae.decode(denormalize_latents(tiny_pipe.vae, latents), return_dict=False)[0]
    assert np.array_equal(np.concatenate(chunks), to_uint8_frames(full))


def test_the_denoising_loop_takes_a_resized_image(tiny_pipe, conditioning):
    _, windows, lengths, num_frames = conditioning
    with pytest.raises(ValueError, match="multiples of 16"):
        tiny_pipe.denoise(Image.new("RGB", (70, 64)), windows, lengths, "x", num_frames=num_frames, num_inference_steps=1)


@pytest.mark.slow
def test_one_known_frame_condition_equals_diffusers_prepare_latents(tiny_pipe, conditioning):
    image = conditioning[0]
    pixels = tiny_pipe.video_processor.preprocess(image, height=SIZE, width=SIZE)
    gen = torch.Generator().manual_seed(0)
    _, expected = tiny_pipe.prepare_latents(pixels, 1, 16, SIZE, SIZE, 25, torch.float32, "cpu", gen)
    ours = tiny_pipe.prepare_condition(pixels[:, :, None], 25)
    assert ours.shape == expected.shape == (1, 20, 7, SIZE // 8, SIZE // 8)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_motion_frames_set_the_mask_of_their_latent_frames(tiny_pipe):
    frames = torch.rand(1, 3, 5, SIZE, SIZE) * 2 - 1
    condition = tiny_pipe.prepare_condition(frames, 25)
    mask = condition[0, :4, :, 0, 0]
    assert mask[:, :2].eq(1).all() and mask[:, 2:].eq(0).all()  # 5 frames = latent frames 0 and 1


@pytest.mark.slow
@pytest.mark.parametrize("text_scale, audio_scale", [(5.0, 4.0), (1.0, 4.0)])
def test_batched_guidance_gives_the_same_result(tiny_pipe, conditioning, text_scale, audio_scale):
    plain = run(tiny_pipe, conditioning, text_guidance_scale=text_scale, audio_guidance_scale=audio_scale)
    tiny_pipe.batch_guidance = True
    try:
        with CallRecorder(tiny_pipe) as rec:
            batched = run(tiny_pipe, conditioning, text_guidance_scale=text_scale, audio_guidance_scale=audio_scale)
    finally:
        tiny_pipe.batch_guidance = False
    passes = 3 if text_scale != 1.0 else 2
    assert len(rec.calls) == 2 and rec.calls[0]["text"].shape[0] == passes  # one batched call per step
    torch.testing.assert_close(batched, plain, rtol=1e-5, atol=1e-5)
