"""A training run over several processes (accelerate DDP): who leads, and a launch that went wrong.

accelerate decides from the launcher's environment whether this process is one of several. Two launches
look like several processes but are not, and would silently train alone (or twice, into the same files):
- plain `torchrun --nproc_per_node N` on CPUs: accelerate only joins the process group there when
  `ACCELERATE_USE_CPU=true` is set, so each process believes it is alone;
- `accelerate launch --num_processes N --cpu`: its simple launcher starts one process (it sets
  MASTER_ADDR/MASTER_PORT, which it does only for N > 1, but no WORLD_SIZE).
`training_processes` refuses both with the command that works. The main process (rank 0) caches the
features while the others wait, and only it prints, writes the log and saves checkpoints.

The gradients are averaged in float64 (`average_gradients_in_float64`): DDP's own average divides each fp32
gradient by N before summing, which is exact for 2 processes but not for 3 (g/3 rounds, and 3 x round(g/3) is
not g), so `--same-samples` on 3 processes drifted from one process. In float64 the sum of N fp32 gradients and
its division by N are exact for equal gradients, and the correctly rounded mean otherwise; the all-reduce moves
twice the bytes (the adapters' gradients: 1.4 G values, 11 GB instead of 5.6 GB per step over 8 GPUs).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from fantasy.errors import InvalidSetting

CPU_COMMAND = "ACCELERATE_USE_CPU=true torchrun --nproc_per_node N -m fantasy train ..."


def launched_processes() -> int | None:
    """Processes the launcher was asked for: WORLD_SIZE, None for "several, count unknown", 1 for a plain run."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        return world
    if "ACCELERATE_USE_CPU" in os.environ and "MASTER_PORT" in os.environ:  # accelerate launch, N > 1
        return None
    return 1


def training_processes():
    """accelerate's process state for this run, after refusing a launch that would not be what was asked."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    check_launch(launched_processes(), state.num_processes)
    return state


def check_launch(launched: int | None, seen: int) -> None:
    """`launched` processes were asked for (None: several); accelerate sees `seen`."""
    if seen > 1 or launched == 1:
        return
    if launched is None:
        raise InvalidSetting(
            "`accelerate launch --cpu` starts one process whatever --num_processes says; this run would train "
            f"alone. On CPUs run `{CPU_COMMAND}`; on GPUs `accelerate launch --multi_gpu --num_processes N -m "
            "fantasy train ...`"
        )
    raise InvalidSetting(
        f"{launched} processes were launched but accelerate sees 1 here, so each would train alone and write the "
        f"same files. On CPUs set ACCELERATE_USE_CPU=true (`{CPU_COMMAND}`); on GPUs check that CUDA is visible"
    )


def _mean_in_float64(process_group, bucket):  # no return annotation: DDP checks it, and ours would be a string
    """DDP communication hook: all-reduce the bucket's gradients in float64, divide by N, cast back."""
    group = process_group if process_group is not None else dist.group.WORLD
    processes = dist.get_world_size(group)
    buffer = bucket.buffer()
    wide = buffer.to(torch.float64)
    future = dist.all_reduce(wide, group=group, async_op=True).get_future()

    def finish(done: torch.futures.Future) -> torch.Tensor:
        buffer.copy_(done.value()[0].div_(processes))
        return buffer

    return future.then(finish)


def average_gradients_in_float64(model) -> bool:
    """Install `_mean_in_float64` on a DDP-wrapped model (before its first backward); False if it is not one."""
    from torch.nn.parallel import DistributedDataParallel

    if not isinstance(model, DistributedDataParallel):
        return False
    model.register_comm_hook(None, _mean_in_float64)
    return True
