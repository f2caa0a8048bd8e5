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
    the real widths and formats survive diffusers' save and load, and one denoising step gives the same latents."""
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

    def latents(pipe) -> torch.Tensor:
        pipe.set_progress_bar_config(disable=True)
        return pipe(image=EXAMPLE_IMAGE, audio=EXAMPLE_SPEECH, num_frames=5, longest_edge=64, num_inference_steps=1,
                    generator=torch.Generator().manual_seed(2), output_type="latent").frames

    files = load_pipeline("real", device="cpu", weights=root, allow_cpu=True, dit="bf16")
    expected = latents(files)
    del files
    loaded = load_pipeline("real", device="cpu", weights=out, allow_cpu=True)
    assert loaded.transformer.config.num_attention_heads * loaded.transformer.config.attention_head_dim == 5120
    assert loaded.transformer.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert loaded.audio_proj.proj.weight.dtype == torch.float32 and loaded.text_encoder.config.d_model == 4096
    assert torch.equal(latents(loaded), expected)
