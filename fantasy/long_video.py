"""Long speech: the frame rule, the window plan and the colour match now live with the pipeline that runs them
(`fantasy.model.long_video`, since `FantasyTalkingPipeline.__call__` chains the windows itself); re-exported here
under their old names."""

from fantasy.model.long_video import (  # noqa: F401 (re-exported)
    MOTION_FRAMES,
    ColourMatch,
    FrameStitcher,
    Window,
    plan_windows,
    total_frame_count,
)
