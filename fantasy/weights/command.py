"""`python -m fantasy convert` and `python -m fantasy download`: the weight files, from the command line.

`fantasy/cli.py` mounts these with `add_parsers(subparsers)`.
"""

from __future__ import annotations


def add_parsers(subparsers) -> None:
    _add_convert(subparsers)
    _add_download(subparsers)


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="released fantasytalking_model.ckpt -> safetensors (bf16)")
    p.add_argument("src")
    p.add_argument("dst")
    p.set_defaults(run=_run_convert)


def _run_convert(args) -> int:
    from fantasy.weights.adapter_weights import convert_checkpoint

    count = convert_checkpoint(args.src, args.dst)
    print(f"wrote {args.dst} ({count} tensors)")
    return 0


def _add_download(sub) -> None:
    p = sub.add_parser("download", help="fetch the real preset's weights from the Hugging Face Hub")
    p.add_argument("--dit", default=None, choices=["q8_0", "q4_k_m", "bf16"],
                   help="DiT file: GGUF Q8_0 (default), GGUF Q4_K_M, or bf16 safetensors (for bf16/-int8/-fp8 modes); "
                        "with --comfy-models: the DiT the ComfyUI folder holds, if any")
    p.add_argument("--comfy-models", default=None, metavar="DIR",
                   help="a ComfyUI models folder (default $FANTASY_COMFY_MODELS): fetch only what it does not hold "
                        "(typically wav2vec2 and the adapter; see docs/comfyui.md)")
    p.add_argument("--dir", default=None, help="weights dir (default weights/ or $FANTASY_WEIGHTS)")
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
