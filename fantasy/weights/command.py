"""`python -m fantasy convert` and `python -m fantasy download`: the weight files, from the command line.

`fantasy/cli.py` mounts each with `add_convert_parser` / `add_download_parser` (both: `add_parsers`).
"""

from __future__ import annotations


def add_parsers(subparsers) -> None:
    add_convert_parser(subparsers)
    add_download_parser(subparsers)


def add_convert_parser(sub) -> None:
    p = sub.add_parser("convert", help="released fantasytalking_model.ckpt -> safetensors (bf16), or a preset -> "
                                       "a diffusers folder (--diffusers)")
    p.add_argument("src", nargs="?", help="the released .ckpt (or a training checkpoint)")
    p.add_argument("dst", nargs="?", help="the .safetensors to write")
    p.add_argument("--diffusers", metavar="OUT", default=None,
                   help="write the preset's whole pipeline as a diffusers folder (model_index.json, one folder per "
                        "component, the adapter included) for FantasyTalkingPipeline.from_pretrained and --weights")
    p.add_argument("--preset", default="real", choices=["real", "tiny"], help="with --diffusers: which pipeline")
    p.add_argument("--weights", default=None, help="with --diffusers: the real preset's weights dir (default weights/ "
                                                    "or $FANTASY_WEIGHTS; needs the bf16 DiT file)")
    p.add_argument("--adapter", default=None, help="with --diffusers: an adapter or training checkpoint instead of "
                                                    "the released one")
    p.set_defaults(run=_run_convert)


def _run_convert(args) -> int:
    from fantasy.errors import InvalidSetting

    if args.diffusers is not None:
        if args.src is not None or args.dst is not None:
            raise InvalidSetting("convert takes SRC DST, or --diffusers OUT, not both")
        from fantasy.weights.diffusers_folder import write_diffusers_folder

        out = write_diffusers_folder(args.diffusers, args.preset, args.weights, args.adapter)
        print(f"wrote {out} (a diffusers folder: FantasyTalkingPipeline.from_pretrained('{out}') or --weights {out})")
        return 0
    if args.src is None or args.dst is None:
        raise InvalidSetting("convert needs SRC DST (the released .ckpt and the .safetensors to write), "
                             "or --diffusers OUT")
    from fantasy.weights.adapter_weights import convert_checkpoint

    count = convert_checkpoint(args.src, args.dst)
    print(f"wrote {args.dst} ({count} tensors)")
    return 0


def add_download_parser(sub) -> None:
    p = sub.add_parser("download", help="fetch the real preset's weights from the Hugging Face Hub")
    p.add_argument("--dit", default=None, choices=["q8_0", "q4_k_m", "bf16"],
                   help="DiT file: GGUF Q8_0 (the default), GGUF Q4_K_M, or bf16 safetensors (for bf16/-int8/-fp8 "
                        "modes); with --comfy-models: the DiT the ComfyUI folder holds, if any")
    p.add_argument("--comfy-models", default=None, metavar="DIR",
                   help="a ComfyUI models folder (default $FANTASY_COMFY_MODELS): fetch only what it does not hold "
                        "(typically wav2vec2 and the adapter; see docs/comfyui.md)")
    p.add_argument("--dir", default=None, help="weights dir (default $FANTASY_WEIGHTS, else weights/ of a checkout, "
                                                "else ~/.cache/fantasy-talking-studio/weights)")
    p.add_argument("--dry-run", action="store_true", help="print the files and sizes, download nothing")
    p.add_argument("--keep-ckpt", action="store_true", help="keep the adapter's .ckpt after converting it")
    p.add_argument("--face", action="store_true", help="also the weights of the optional face-alignment backend (--face-backend face-alignment)")
    p.set_defaults(run=_run_download)


def _run_download(args) -> int:
    from fantasy.weights.comfy_folder import comfy_models_dir
    from fantasy.weights.download import download

    comfy = comfy_models_dir(args.comfy_models)
    download(args.dit if comfy is not None else args.dit or "q8_0", args.dir, dry_run=args.dry_run,
             keep_ckpt=args.keep_ckpt, face=args.face, comfy=comfy)
    return 0
