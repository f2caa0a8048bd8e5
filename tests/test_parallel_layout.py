"""Layouts that cannot work are refused before any model loads, each with one line naming what would work.

The Ulysses rule is checked against diffusers' own code (`_maybe_pad_qkv_head`), degree by degree; the 3-process
launch of the tiny preset (2 heads) is refused by every rank before loading and said once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fantasy.errors import InvalidSetting
from fantasy.speed.layout import (
    ContextParallel,
    check_context_parallel,
    check_token_split,
    ulysses_splits,
    video_tokens,
    working_ulysses_degrees,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("heads", [40, 2, 6, 12])
def test_the_ulysses_rule_is_diffusers_own(monkeypatch, heads):
    """For every degree up to 48: our rule says yes exactly when diffusers' head padding does not assert."""
    import diffusers.models.attention_dispatch as dispatch

    for degree in range(2, 49):
        monkeypatch.setattr(dispatch.dist, "get_world_size", lambda group=None, d=degree: d)
        try:
            dispatch._maybe_pad_qkv_head(torch.zeros(1, 1, heads, 1), heads, None)
            diffusers_splits = True
        except AssertionError:
            diffusers_splits = False
        assert ulysses_splits(heads, degree) == diffusers_splits, (heads, degree)


def test_the_degrees_that_work_with_40_heads():
    assert working_ulysses_degrees(40) == [2, 3, 4, 5, 6, 7, 8, 10, 14, 20, 40]  # the list, by exclusion


@pytest.mark.parametrize("degree,message", [
    (9, r"^Ulysses over 9 processes cannot split the DiT's 40 attention heads \(diffusers pads them to 45 = 9 x 5 "
        r"and refuses a padding of 5 heads, not fewer than each process's 5\); Ulysses degrees that work with 40 "
        r"heads: 2-8, 10, 14, 20, 40$"),
    (16, r"^Ulysses over 16 processes cannot split the DiT's 40 attention heads \(diffusers pads them to 48 = 16 x 3 "
         r"and refuses a padding of 8 heads, not fewer than each process's 3\); Ulysses degrees that work with 40 "
         r"heads: 2-8, 10, 14, 20, 40; or combine: --context-parallel 16 --ulysses-degree 8 \(Ulysses 8 x ring 2, "
         r"needs --attention flash/cudnn/sage\)$"),
    (48, r"^Ulysses over 48 processes cannot split the DiT's 40 attention heads"),
])
def test_a_ulysses_degree_the_heads_cannot_take_is_one_line(degree, message):
    with pytest.raises(InvalidSetting, match=message) as refused:
        check_context_parallel(ContextParallel(degree), world_size=degree, heads=40)
    assert "\n" not in str(refused.value)


def test_ulysses_times_ring_lets_16_processes_run():
    both = ContextParallel(16, ulysses_degree=8)
    assert (both.ulysses, both.ring, both.hybrid) == (8, 2, True)
    assert both.describe() == "context parallel: ulysses 8 x ring 2 over 16 processes"
    check_context_parallel(both, attention="flash", world_size=16, heads=40)
    for degree in working_ulysses_degrees(40):  # every plain Ulysses degree that works is still accepted
        check_context_parallel(ContextParallel(degree), world_size=degree, heads=40)


@pytest.mark.parametrize("options,kwargs,message", [
    (ContextParallel(16, ulysses_degree=8), {}, r"Ulysses x ring \(ring 2\) needs a backend that returns the "
                                                r"log-sum-exp"),
    (ContextParallel(16, ulysses_degree=6), {"attention": "flash"}, r"--ulysses-degree must divide --context-parallel "
                                                                    r"16 \(Ulysses U x ring 16/U\), got 6"),
    (ContextParallel(12, ulysses_degree=3), {"attention": "flash"}, r"Ulysses x ring needs the DiT's 40 attention "
                                                                    r"heads to divide by the Ulysses degree, and 3 "
                                                                    r"does not .*; use --ulysses-degree 4"),
    (ContextParallel(8, "ring", ulysses_degree=4), {"attention": "flash"}, "drop --context-parallel-kind ring"),
    (ContextParallel(2, timeout_s=0), {}, "--collective-timeout must be more than 0 seconds, got 0"),
    (ContextParallel(2), {"vram": "model-offload"}, r"--vram model-offload cannot be combined with --context-parallel"),
])
def test_each_wrong_combination_of_degrees_has_its_message(options, kwargs, message):
    with pytest.raises(InvalidSetting, match=message):
        check_context_parallel(options, world_size=options.degree, heads=40, **kwargs)


def test_ulysses_times_ring_refuses_sizes_only_the_uneven_split_could_cut():
    both = ContextParallel(16, ulysses_degree=8)
    assert video_tokens(512, 512, 81) == 21 * 32 * 32 == 21504  # divides by 16
    assert video_tokens(832, 480, 81) == 21 * 52 * 30 == 32760  # does not
    check_token_split(both, [video_tokens(512, 512, 81)])
    with pytest.raises(InvalidSetting, match=r"^Ulysses x ring needs the video tokens of each window \(32760\) to "
                                             r"divide by 16 processes"):
        check_token_split(both, [video_tokens(832, 480, 81)])
    check_token_split(ContextParallel(16), [32760])  # Ulysses alone takes it (diffusers' uneven split)
    with pytest.raises(InvalidSetting, match="compiled blocks under context parallelism"):
        check_token_split(ContextParallel(16), [32760], compiled=True)


def test_sharded_weights_need_a_group(tmp_path, speech_wav, capsys):
    from fantasy.cli import main
    from tests.conftest import EXAMPLE_IMAGE

    code = main(["generate", "--image", str(EXAMPLE_IMAGE), "--audio", str(speech_wav), "--out",
                 str(tmp_path / "x.mp4"), "--vram", "sharded"])
    assert code == 2 and capsys.readouterr().err.strip() == (
        "error: --vram sharded splits the weights over a context-parallel group: add --context-parallel N and "
        "launch N processes with torchrun")


@pytest.mark.slow
def test_three_processes_on_a_two_head_dit_are_refused_before_loading_once(tmp_path, speech_wav):
    """torchrun --nproc_per_node 3 on the tiny preset (2 heads): every rank refuses before joining or loading; the
    launch's rank 0 alone says why."""
    from tests.conftest import EXAMPLE_IMAGE

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "3", "-m", "fantasy", "generate",
               "--image", str(EXAMPLE_IMAGE), "--audio", str(speech_wav), "--out", str(tmp_path / "x.mp4"),
               "--context-parallel", "3"]
    done = subprocess.run(command, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    line = ("error: Ulysses over 3 processes cannot split the DiT's 2 attention heads (diffusers pads them to 3 = "
            "3 x 1 and refuses a padding of 1 heads, not fewer than each process's 1); Ulysses degrees that work "
            "with 2 heads: 2")
    assert done.stderr.count(line) == 1, done.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".mp4" or p.name.startswith(".")] == []
