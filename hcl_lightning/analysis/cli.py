"""``hcl-analyze``: analyses of a trained HCL checkpoint from the command line.

::

    hcl-analyze norms --checkpoint last.ckpt --image-dir data/images \\
        --ann-file data/annotations.json --out out/norms [--scene-crops 4]
    hcl-analyze out-of-context --checkpoint last.ckpt --image-dir data/images \\
        --ann-file data/annotations.json --out out/ooc
    hcl-analyze embed --checkpoint last.ckpt --image-dir data/images [--ann-file ...] \\
        --out out/embeddings [--format pt]
    hcl-analyze export --checkpoint last.ckpt --out r50.pkl --format detectron2

Each command prints ``key=value`` lines (``spearman_rho=``, ``ooc_auroc=``, ...) that
scripts can grep, and the files it wrote. ``python -m hcl_lightning.analysis`` is the
same program.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, help="Lightning .ckpt file")
    parser.add_argument(
        "--model-class",
        default="hcl_lightning.baselines.HCLMoCoV2",
        help="class that rebuilds the model from the checkpoint (package.module.Class)",
    )


def _add_data_args(parser: argparse.ArgumentParser, ann_required: bool = True) -> None:
    parser.add_argument("--image-dir", required=True, type=Path, help="folder of the images")
    parser.add_argument(
        "--ann-file",
        required=ann_required,
        type=Path,
        help="COCO instances JSON" + ("" if ann_required else " (default: every image found)"),
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--image-size", type=int, default=224, help="side of the model input")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--min-box-size", type=float, default=1.0, help="smallest box side kept")
    parser.add_argument("--max-images", type=int, default=None, help="use the first N images")


def _add_analysis(
    sub: argparse._SubParsersAction, name: str, help: str, ann_required: bool = True
) -> argparse.ArgumentParser:
    """A subcommand that runs an analysis of a model on images: model and data arguments."""
    parser = sub.add_parser(name, help=help)
    _add_model_args(parser)
    _add_data_args(parser, ann_required=ann_required)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hcl-analyze",
        description="Analyses of a Hyperbolic Contrastive Learning checkpoint.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    norms = _add_analysis(sub, "norms", "ball norm vs. number of objects (HCL Figure 3)")
    norms.add_argument("--scene-crops", type=int, default=0, help="random crops per image")
    norms.add_argument("--seed", type=int, default=0, help="seed of the scene crops")

    ooc = _add_analysis(
        sub, "out-of-context", "object-to-scene hyperbolic distances (HCL Figure 5)"
    )
    ooc.add_argument("--object-size", type=int, default=None, help="default: --image-size")
    ooc.add_argument("--grid-images", type=int, default=16, help="images drawn in the grid")

    embed = _add_analysis(
        sub, "embed", "Euclidean and ball embeddings of whole images", ann_required=False
    )
    embed.add_argument("--format", choices=("npy", "pt"), default="npy")

    export = sub.add_parser("export", help="backbone weights for torchvision or detectron2")
    _add_model_args(export)
    export.add_argument(
        "--out", required=True, type=Path, help="output file (or folder: default name)"
    )
    export.add_argument("--format", choices=("torchvision", "detectron2"), default="torchvision")
    export.add_argument("--encoder", choices=("online", "momentum"), default="online")
    return parser


def _fmt(value: float | None) -> str:
    return "nan" if value is None or not math.isfinite(value) else f"{value:.6f}"


def _images(args: argparse.Namespace) -> list:
    from hcl_lightning.analysis.embed import read_coco, read_folder

    if args.ann_file is not None:
        images = read_coco(args.image_dir, args.ann_file, min_box_size=args.min_box_size)
    else:
        images = read_folder(args.image_dir)
    if args.max_images is not None:
        images = images[: args.max_images]
    if not images:
        raise SystemExit(f"hcl-analyze: no images found in {args.image_dir}")
    return images


def _model(args: argparse.Namespace):
    from hcl_lightning.analysis.embed import load_model

    return load_model(args.checkpoint, args.model_class, device=args.device)


def _analyse(args: argparse.Namespace, analysis, **kwargs) -> dict:
    """``analysis`` of the checkpoint's model on the images of ``args``, into ``args.out``.

    Passes the shared data arguments (``image_size``, ``batch_size``, ``num_workers``)
    and ``kwargs``; returns what ``analysis`` returns.
    """
    return analysis(
        _model(args),
        _images(args),
        args.out,
        image_size=args.image_size,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        **kwargs,
    )


def _print_values(result: dict, keys: Sequence[str]) -> None:
    for key in keys:
        print(f"{key}={result[key]}")


def _run_norms(args: argparse.Namespace) -> None:
    from hcl_lightning.analysis.norms import norms_vs_objects

    result = _analyse(args, norms_vs_objects, scene_crops=args.scene_crops, seed=args.seed)
    print(f"spearman_rho={_fmt(result['spearman_rho'])}")
    print(f"spearman_p={_fmt(result['spearman_p'])}")
    _print_values(result, ("n_items", "norms_csv", "groups_csv", "plot"))


def _run_ooc(args: argparse.Namespace) -> None:
    from hcl_lightning.analysis.out_of_context import out_of_context_scores

    result = _analyse(
        args,
        out_of_context_scores,
        object_size=args.object_size,
        max_grid_images=args.grid_images,
    )
    if result["ooc_auroc"] is not None:
        print(f"ooc_auroc={_fmt(result['ooc_auroc'])}")
    print(f"n_objects={result['n_objects']}")
    print(f"mean_distance={_fmt(result['mean_distance'])}")
    _print_values(result, ("csv", "json", "grid"))


def _run_embed(args: argparse.Namespace) -> None:
    from hcl_lightning.analysis.embed import embed_dataset

    meta = _analyse(args, embed_dataset, fmt=args.format)
    _print_values(meta, ("n_images", "feature_dim", "ball_dim"))
    print(f"out={args.out}")


def _run_export(args: argparse.Namespace) -> None:
    from hcl_lightning.export import export_detectron2, export_torchvision

    out = args.out
    if out.is_dir() or not out.suffix:
        name = "backbone_torchvision.pth" if args.format == "torchvision" else "backbone.pkl"
        out = out / name
    if args.format == "torchvision":
        n = len(export_torchvision(args.checkpoint, out, encoder=args.encoder))
    else:
        n = len(export_detectron2(args.checkpoint, out, encoder=args.encoder)["model"])
    print(f"n_tensors={n}")
    print(f"out={out}")


COMMANDS = {
    "norms": _run_norms,
    "out-of-context": _run_ooc,
    "embed": _run_embed,
    "export": _run_export,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hcl-analyze``; returns the exit status."""
    args = build_parser().parse_args(argv)
    for name in ("image_size", "batch_size"):
        if getattr(args, name, 1) < 1:
            print(f"hcl-analyze: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    try:
        COMMANDS[args.command](args)
    except (FileNotFoundError, ValueError) as err:
        print(f"hcl-analyze {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
