"""The real widths through a diffusers folder (`fantasy convert --diffusers`, then `--weights FOLDER`): its own file so
that the suite's two workers (`pytest -n 2 --dist loadfile`) share the long real-width tests."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from tests.test_real_width import root  # noqa: F401, F811 (the real-width files, written once for this module)

from .conftest import EXAMPLE_IMAGE, EXAMPLE_SPEECH


@pytest.mark.slow
def test_real_widths_written_as_a_diffusers_folder_load_back_to_the_same_video(root, tmp_path):  # noqa: F811
    """`fantasy convert --diffusers` on the real preset's files (bf16 DiT, on the CPU), then `--weights FOLDER`:
    the real widths and formats survive diffusers' save and load: the text encoder gives the same output and one
    denoising step the same latents."""
    import json

    from fantasy.weights.diffusers_folder import write_diffusers_folder
    from fantasy.weights.presets import load_pipeline

    out = write_diffusers_folder(tmp_path / "real-diffusers", "real", weights=root)
    index = json.loads((out / "model_index.json").read_text())
    assert index["transformer"] == ["diffusers", "WanTransformer3DModel"]
    assert index["audio_adapter"] == ["fantasy.model.saved_adapter", "FantasyTalkingAdapter"]
    with safe_open(str(out / "audio_adapter" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert sorted(f.keys()) == ["blocks.0.k_proj.weight", "blocks.0.v_proj.weight"]
        assert f.get_slice("blocks.0.k_proj.weight").get_shape() == [5120, 2048]

    # One denoising step with the guidance off (one DiT pass) on a 16-token prompt from the text encoder itself:
    # bf16 matmuls run ~6x slower than fp32 on a CPU, and the release's 512-token prompt through umT5 at 4096
    # wide twice per pipeline cost this test 2 minutes without checking anything more. The text encoder's
    # round trip is checked on its own output; the DiT, image and audio encoders, VAE encoder and adapter through
    # the call.
    tokens = torch.arange(1, 17)[None]

    def prompt_and_latents(pipe) -> tuple[torch.Tensor, torch.Tensor]:
        pipe.set_progress_bar_config(disable=True)
        with torch.no_grad():
            prompt = pipe.text_encoder(tokens).last_hidden_state
        latents = pipe(image=EXAMPLE_IMAGE, audio=EXAMPLE_SPEECH, prompt_embeds=prompt, guidance_scale=1.0,
                       audio_guidance_scale=1.0, num_frames=5, longest_edge=64, num_inference_steps=1,
                       generator=torch.Generator().manual_seed(2), output_type="latent").frames
        return prompt, latents

    files = load_pipeline("real", device="cpu", weights=root, allow_cpu=True, dit="bf16")
    expected_prompt, expected = prompt_and_latents(files)
    del files
    loaded = load_pipeline("real", device="cpu", weights=out, allow_cpu=True)
    assert loaded.transformer.config.num_attention_heads * loaded.transformer.config.attention_head_dim == 5120
    assert loaded.transformer.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert loaded.audio_proj.proj.weight.dtype == torch.float32 and loaded.text_encoder.config.d_model == 4096
    prompt, latents = prompt_and_latents(loaded)
    assert expected_prompt.shape == (1, 16, 4096) and torch.equal(prompt, expected_prompt)
    assert torch.equal(latents, expected)
