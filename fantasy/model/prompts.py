"""The release's prompts: Wan's negative prompt with FantasyTalking's "motionless" prefix, and the prompts.

Their own module because the pipeline (defaults) and the motion sliders (which rewrite them) both need them.
"""

DEFAULT_PROMPT = "A person is talking."
RELEASE_PROMPT = "A woman is talking."  # infer.py's --prompt default (`--release` uses it)


def default_prompt(release: bool) -> str:
    """The prompt when none is given: ours, or in release mode the release's."""
    return RELEASE_PROMPT if release else DEFAULT_PROMPT


# Wan's default negative prompt, prefixed (as the release does) with "person motionless, still".
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
MOTIONLESS_PREFIX = "人物静止不动，静止，"
DEFAULT_NEGATIVE_PROMPT = MOTIONLESS_PREFIX + WAN_NEGATIVE_PROMPT
