"""Per-latent-frame audio windows against the release's table (reference §1.6)."""

import pytest
import torch

from fantasy.model.windows import WindowRange, latent_frame_count, split_into_windows, window_ranges


def ranges(num_tokens, num_frames):
    return [(r.start, r.end, r.valid_count(num_tokens)) for r in window_ranges(num_tokens, num_frames)]


@pytest.mark.parametrize(
    "fps, num_tokens, width, first, last, k_lens",
    [
        (23, 175, 17, [(-11, 5, 6), (-3, 13, 14), (6, 22, 17)], (161, 177, 14), [6, 14] + [17] * 18 + [14]),
        (16, 252, 21, [(-14, 6, 7), (-2, 18, 19)], (234, 254, 18), [7, 19] + [21] * 18 + [18]),
        (25, 161, 15, [(-9, 5, 6), (-3, 11, 12)], (149, 163, 12), [6, 12] + [15] * 18 + [12]),
    ],
)
def test_release_window_table_at_81_frames(fps, num_tokens, width, first, last, k_lens):
    got = ranges(num_tokens, 81)
    assert len(got) == 21
    assert got[: len(first)] == first
    assert got[-1] == last
    assert [r[2] for r in got] == k_lens
    windows, lengths = split_into_windows(torch.randn(1, num_tokens, 8), 81)
    assert windows.shape == (1, 21, width, 8)
    assert lengths.tolist() == k_lens


def test_centre_uses_the_release_floating_point_order():
    # L=168, 77 frames, latent frame 3: (tpf*9 + tpf*13)/2 = 23.999... -> 22, while int(tpf*11)-1 = 23.
    got = window_ranges(168, 77)[3]
    half = int(2 * 168 / 77)
    assert (got.start + 4 + half, got.end - 4 - half) == (22, 22)
    assert int(168 / 77 * 11) - 1 == 23  # the algebraic shortcut would have been off by one


def test_windows_copy_the_right_tokens_and_pad_with_zeros():
    tokens = torch.arange(1, 176, dtype=torch.float32).view(1, 175, 1).repeat(1, 1, 3)
    windows, lengths = split_into_windows(tokens, 81)
    # Window 0 covers tokens -11..5: the valid ones 0..5 first, then 11 zero pads.
    assert windows[0, 0, :6, 0].tolist() == [1, 2, 3, 4, 5, 6]
    assert torch.count_nonzero(windows[0, 0, 6:]) == 0
    # Window 2 covers tokens 6..22 exactly.
    assert windows[0, 2, :, 0].tolist() == [float(i + 1) for i in range(6, 23)]
    # Last window: tokens 161..174, then 3 pads.
    assert windows[0, 20, :14, 0].tolist() == [float(i + 1) for i in range(161, 175)]
    assert torch.count_nonzero(windows[0, 20, 14:]) == 0
    assert lengths[20] == 14


def test_latent_frame_count_requires_4k_plus_1():
    assert latent_frame_count(81) == 21
    assert latent_frame_count(5) == 2
    assert latent_frame_count(1) == 1
    assert latent_frame_count(9, temporal_factor=2) == 5
    with pytest.raises(ValueError, match="4k\\+1"):
        latent_frame_count(80)


def test_windows_past_the_end_of_the_speech_are_empty():
    """Speech shorter than the clip (3 tokens for 81 frames): later latent frames hold no token at all."""
    ranges = window_ranges(3, 81, tokens_per_frame=175 / 81)  # the clip's rate, as a long video passes it
    counts = [r.valid_count(3) for r in ranges]
    assert counts[:2] == [3, 3] and counts[2:] == [0] * 19
    windows, lengths = split_into_windows(torch.ones(1, 3, 2), 81, tokens_per_frame=175 / 81)
    assert lengths.dtype == torch.long and lengths.tolist() == counts
    assert torch.count_nonzero(windows[:, 2:]) == 0 and windows[0, 0, :3].eq(1).all()


def test_a_single_frame_gets_the_window_ending_at_the_first_token():
    """One frame (one latent frame): no later window to line up with, so frame 0's 2*half+1 tokens end at 0."""
    assert window_ranges(10, 1) == [WindowRange(-2 * 20 - 4, 0 + 4)]  # tpf 10, half 20, widened by 4
