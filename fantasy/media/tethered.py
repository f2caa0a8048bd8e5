"""Child processes (ffmpeg) that die with the process that started them.

A process killed with SIGKILL runs no cleanup: the ffmpeg encoding its frames then saw its input close and
finished a playable file from the frames it had, and a mux went on to the end, on their own. Linux can tie a
child to its parent: `prctl(PR_SET_PDEATHSIG, SIGKILL)`, set in the child between fork and exec (it survives the
exec), kills the child when the parent thread goes. Python has no wrapper for it, so it is called through
ctypes. Elsewhere (macOS) children run untied; the temporary files they leave are still found and removed by the
next run (`fantasy.media.output.remove_stale_temporaries`).

The signal follows the *thread* that started the child: start and finish a child on the same thread (every
caller here does: the writer lives inside one generation, on one thread).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()  # looked up once, here: the child only calls it


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` for `subprocess` that ties the child to this process (None where the system cannot)."""
    if _PRCTL is None:
        return None
    parent = os.getpid()

    def tie() -> None:
        if _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(126)  # no tie, no child: refusing to start beats an ffmpeg that may outlive us
        if os.getppid() != parent:  # the parent died before the tie was made
            os._exit(1)

    return tie
