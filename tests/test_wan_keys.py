"""Our diffusers -> original Wan key map is the exact inverse of diffusers' single-file conversion."""

import pytest
import torch
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

from fantasy.weights.tiny import tiny_transformer
from fantasy.weights.wan_keys import to_original_key, to_original_state_dict


@pytest.mark.parametrize("num_layers", [2])
def test_round_trip_through_diffusers_conversion_is_exact(num_layers):
    state = tiny_transformer().state_dict()
    original = to_original_state_dict(state)
    back = convert_wan_transformer_to_diffusers(dict(original))
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_spot_checks_against_the_reference_table():
    assert to_original_key("blocks.3.norm2.weight") == "blocks.3.norm3.weight"  # the swapped affine norm
    assert to_original_key("scale_shift_table") == "head.modulation"
    assert to_original_key("blocks.0.scale_shift_table") == "blocks.0.modulation"
    assert to_original_key("blocks.1.attn2.add_k_proj.weight") == "blocks.1.cross_attn.k_img.weight"
    assert to_original_key("blocks.1.attn2.norm_added_k.weight") == "blocks.1.cross_attn.norm_k_img.weight"
    assert to_original_key("blocks.0.attn1.to_out.0.bias") == "blocks.0.self_attn.o.bias"
    assert to_original_key("condition_embedder.image_embedder.ff.net.2.weight") == "img_emb.proj.3.weight"
    assert to_original_key("proj_out.weight") == "head.head.weight"


def test_adapter_keys_have_no_original_name():
    with pytest.raises(KeyError, match="processor"):
        to_original_key("blocks.0.attn2.processor.k_proj.weight")


def test_a_rule_set_that_merges_two_keys_is_refused(monkeypatch):
    """The shipped rules are one-to-one (the round trip shows it); a rule that folds two keys into one must fail."""
    import re

    from fantasy.weights import wan_keys

    monkeypatch.setattr(wan_keys, "_RULES", [(re.compile(r"^blocks\.\d+\."), "blocks.0.")])
    state = {"blocks.0.norm2.weight": torch.zeros(1), "blocks.1.norm2.weight": torch.ones(1)}
    with pytest.raises(ValueError, match="^two diffusers keys map to the same original name$"):
        to_original_state_dict(state)
