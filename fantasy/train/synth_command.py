"""`python -m fantasy make-clips --out DIR --count N`: synthetic talking clips for training (`fantasy.train.synthetic`)."""

from __future__ import annotations

import sys


def add_parser(subparsers):
    p = subparsers.add_parser(
        "make-clips",
        help="render synthetic talking clips (espeak-ng speech + warped public-domain photos) for `train`",
        description="Clips with known ground truth, deterministic by seed, in the folder layout `train --data` "
        "reads (NAME.mp4, NAME.wav, NAME.txt, NAME.landmarks.npy, NAME.truth.json). Needs espeak-ng. Clips "
        "already in the folder are kept, so an interrupted run continues.",
    )
    p.add_argument("--out", required=True, help="folder to write the clips into")
    p.add_argument("--count", type=int, required=True, help="how many clips")
    p.add_argument("--seed", type=int, default=0, help="clip i uses seed SEED+i (default 0)")
    p.add_argument("--size", type=int, default=128, help="frame side in px, a multiple of 16 (default 128)")
    p.add_argument("--min-frames", type=int, default=33, help="at least this many frames per clip (default 33)")
    p.add_argument("--held-out-voice", action="store_true",
                   help="speak with the held-out voice (en-gb-scotland) that training sets never use")
    p.add_argument("--photos", default=None, help="comma-separated training photos (default: all: collins,hopper)")
    p.add_argument("--prefix", default="clip", help="clip names are PREFIX-SEED (default clip)")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from fantasy.errors import InvalidSetting
    from fantasy.train.portraits import PHOTOS
    from fantasy.train.synthetic import HELD_OUT_VOICE, VOICES, make_clips

    if args.size < 32 or args.size % 16:
        raise InvalidSetting(f"--size must be a multiple of 16 and at least 32, got {args.size}")
    photos = tuple(PHOTOS) if args.photos is None else tuple(p.strip() for p in args.photos.split(",") if p.strip())
    unknown = [p for p in photos if p not in PHOTOS]
    if unknown or not photos:
        raise InvalidSetting(f"--photos must name some of {', '.join(PHOTOS)}, got {args.photos!r}")
    voices = (HELD_OUT_VOICE,) if args.held_out_voice else VOICES
    every = max(1, args.count // 20)

    def progress(done: int, total: int, name: str) -> None:
        if done % every == 0 or done == total:
            print(f"  clip {done}/{total}: {name}", file=sys.stderr)

    paths = make_clips(args.out, args.count, args.seed, args.size, args.min_frames, photos, voices, args.prefix, progress)
    print(f"wrote {len(paths)} clips to {args.out}; train on them with `python -m fantasy train --data {args.out} ...`")
    return 0
