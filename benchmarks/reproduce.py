"""Reproduction benchmark: HCL against its λ = 0 control and the untrained network.

On synthetic scenes with ground truth (object classes and counts, scene contexts,
out-of-context objects), with the same seeds, steps, backbone and data for every arm,
this script pretrains

- ``moco_v2``: HCL-MoCo-v2 with ``hcl.lam=0`` (the hyperbolic branch off: MoCo-v2 on
  object crops, the paper's "HCL w/o L_hyp" control; its ball map is the untrained
  initial one on top of the trained projection head);
- ``hcl``: the same with ``hcl.lam=--lam`` (paper: 0.1);

and evaluates them, and the untrained network (``untrained``, same seeds), on held-out
scenes of a second generated set:

- ``rho_images``: Spearman's ρ between the ball norm of whole images (online encoder +
  Poincaré head, as scenes are embedded in training) and their number of objects: the
  paper's Figure 3 (``hcl-analyze norms``);
- ``rho_crops``: the same over random crops of the images (sides 30-100 %), each with
  the number of objects at least half inside it: crops span the object-to-scene range
  the training pairs span;
- ``ooc_auroc``: AUROC of the hyperbolic distance between an object crop (key encoder)
  and its whole image (online encoder) for finding the objects of another context:
  the paper's Figure 5 (``hcl-analyze out-of-context``);
- ``knn_top1`` / ``linear_top1``: object classification from frozen backbone features
  of the object crops (weighted 20-NN; logistic regression), trained on half of the
  held-out images and tested on the other half;
- ``scene_map``: multi-label linear probe on whole-image backbone features (which
  classes an image shows), mean average precision.

Every cell is the mean ± standard deviation over ``--seeds`` seeds; a paired row gives
the mean of the per-seed differences ``hcl − moco_v2`` and in how many seeds it is
positive (same seed: same initial weights and data order); a ``chance`` row
gives the 95 % permutation band of ρ and AUROC (labels shuffled, ``--permutations``
times) and the chance levels of the probes (majority class; mean class prevalence for
mAP). The table is printed and written to ``<out>/reproduce.md`` (per-run values in
``<out>/runs.csv``), with the Figure 3/5 plots of each arm's first seed.

Usage::

    python benchmarks/reproduce.py                     # ~20 min on 2 CPU cores
    python benchmarks/reproduce.py --seeds 5 --steps 1000 --train-images 8000
    python benchmarks/reproduce.py --override hcl.c=0.1 --override hcl.tau=0.1
    python benchmarks/reproduce.py --random-colours    # classes told apart by shape only
    python benchmarks/reproduce.py --appearance instance  # each object its own look
    python benchmarks/reproduce.py --quick             # smoke run, ~1 min
    python benchmarks/reproduce.py --family heldout    # on scenes of another generator

``--family heldout`` trains and evaluates on the scenes of ``benchmarks/heldout_scenes.py``
instead (other object kinds, contexts, textures and layouts, written for evaluation only:
the method was not developed on them): training scenes of seed 1 without out-of-context
objects, validation scenes of seed 1000 for the online probes, held-out scenes of seed 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from heldout_scenes import make_heldout_scenes  # benchmarks/, next to this script
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import DictConfig
from scipy import stats

from hcl_lightning.analysis.embed import (
    AnnotatedImage,
    embed_crops,
    embed_images,
    load_model,
    read_coco,
)
from hcl_lightning.analysis.norms import norms_vs_objects
from hcl_lightning.analysis.out_of_context import auroc, out_of_context_scores
from hcl_lightning.analysis.probes import (
    knn_top1,
    linear_probe_top1,
    multilabel_map,
    permutation_band,
)
from hcl_lightning.data import make_synthetic_scenes
from hcl_lightning.train import train

ARMS = ("untrained", "moco_v2", "hcl")
FAMILIES = ("synthetic", "heldout")
#: Seeds of the ``--family heldout`` scene sets, and the validation set's size (that of
#: ``data.val_synthetic`` of the synthetic family).
HELDOUT_SEEDS = {"train": 1, "val": 1000, "eval": 2}
HELDOUT_VAL_IMAGES = 100
METRICS = {  # key: (column title, chance-band kind)
    "rho_images": ("ρ(norm, #obj) images", "band"),
    "rho_crops": ("ρ(norm, #obj) crops", "band"),
    "ooc_auroc": ("OOC AUROC", "band"),
    "knn_top1": ("kNN top-1", "level"),
    "linear_top1": ("linear top-1", "level"),
    "scene_map": ("scene mAP", "level"),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per arm")
    parser.add_argument("--steps", type=int, default=250, help="training steps per run")
    parser.add_argument("--lam", type=float, default=0.1, help="λ of the HCL arm")
    parser.add_argument(
        "--arms", nargs="+", choices=ARMS, default=list(ARMS), help="rows to run (default: all)"
    )
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--eval-images", type=int, default=400)
    parser.add_argument("--image-size", type=int, default=96, help="side of generated scenes")
    parser.add_argument("--ooc-fraction", type=float, default=0.3, help="of the eval images")
    parser.add_argument("--scene-crops", type=int, default=2, help="random crops per image")
    parser.add_argument(
        "--random-colours",
        action="store_true",
        help="objects in random colours (training and held-out scenes): classes by shape only",
    )
    parser.add_argument(
        "--appearance",
        choices=("class", "instance"),
        default="class",
        help="objects alike within a class (the look of the recorded results, default) or "
        "each instance its own look (make_synthetic_scenes' default)",
    )
    parser.add_argument(
        "--family",
        choices=FAMILIES,
        default="synthetic",
        help="scene generator of training and held-out scenes: hcl_lightning's synthetic "
        "scenes, or benchmarks/heldout_scenes.py (evaluation only)",
    )
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="extra hcl-train override for both trained arms (repeatable), e.g. hcl.c=0.1",
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/reproduce"))
    parser.add_argument("--data-root", type=Path, default=None, help="default: <out>/data")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (~1 min)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.train_images, args.eval_images = 1, 3, 64, 24
        args.permutations = 50
    for name in ("seeds", "steps", "train_images", "eval_images", "permutations"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 < args.ooc_fraction <= 1:
        parser.error("--ooc-fraction must be in (0, 1]")
    if (args.random_colours or args.appearance != "class") and args.family != "synthetic":
        parser.error("--random-colours and --appearance apply to --family synthetic only")
    return args


# -- data and runs ----------------------------------------------------------------
def synthetic_args(args: argparse.Namespace, split: str) -> dict[str, Any]:
    """Arguments of :func:`make_synthetic_scenes` for the training or held-out scenes."""
    root = (args.data_root or args.out / "data") / split
    common = {
        "root": root,
        "image_size": args.image_size,
        "contexts": True,
        "random_colours": args.random_colours,
        "appearance": args.appearance,
    }
    if split == "train":  # contexts only: what belongs together is learnt from here
        return {**common, "n_images": args.train_images, "seed": 1}
    return {**common, "n_images": args.eval_images, "seed": 2, "ooc_fraction": args.ooc_fraction}


def heldout_data(args: argparse.Namespace, split: str) -> tuple[Path, Path]:
    """``(image_dir, ann_file)`` of the ``--family heldout`` scenes of ``split`` ("train",
    "val" or "eval"), generated on first use."""
    root = ((args.data_root or args.out / "data") / f"heldout-{split}").resolve()
    n_images = {"train": args.train_images, "val": HELDOUT_VAL_IMAGES}.get(split, args.eval_images)
    return make_heldout_scenes(
        root,
        n_images=n_images,
        image_size=args.image_size,
        seed=HELDOUT_SEEDS[split],
        ooc_fraction=args.ooc_fraction if split == "eval" else 0.0,
    )


def eval_data(args: argparse.Namespace) -> tuple[Path, Path]:
    """``(image_dir, ann_file)`` of the held-out scenes every model is evaluated on."""
    if args.family == "heldout":
        return heldout_data(args, "eval")
    return make_synthetic_scenes(**synthetic_args(args, "eval"))


def data_overrides(args: argparse.Namespace) -> list[str]:
    """``hcl-train`` overrides of the training (and validation) scenes of ``--family``."""
    if args.family == "synthetic":
        data = synthetic_args(args, "train")
        return [f"data.synthetic.{key}={value}" for key, value in data.items()]
    (train_images, train_ann), (val_images, val_ann) = (
        heldout_data(args, split) for split in ("train", "val")
    )
    return [
        "~data.synthetic",
        "~data.val_synthetic",
        f"data.image_dir={train_images}",
        f"data.ann_file={train_ann}",
        f"data.validation.image_dir={val_images}",
        f"data.validation.ann_file={val_ann}",
    ]


def run_config(args: argparse.Namespace, arm: str, seed: int) -> DictConfig:
    """The ``hcl-train`` config of one run: the CPU demo preset on the training scenes."""
    lam = args.lam if arm == "hcl" else 0.0
    overrides = [
        f"seed={seed}",
        f"hcl.lam={lam}",
        f"trainer.max_steps={args.steps}",
        "trainer.enable_progress_bar=false",
        "+trainer.enable_model_summary=false",
        *data_overrides(args),
        f"output_dir={args.out / 'runs' / f'{arm}-seed{seed}'}",
        *args.override,
    ]
    with initialize_config_module("hcl_lightning.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def build_model(args: argparse.Namespace, arm: str, seed: int) -> tuple[pl.LightningModule, int]:
    """The untrained network, or the network after a training run of ``arm``, and the
    side of its training crops (the evaluation resizes images and crops to it)."""
    cfg = run_config(args, arm, seed)
    if arm == "untrained":
        pl.seed_everything(seed, workers=True)
        model = instantiate(cfg.model, _convert_="all").eval()
    else:
        model = load_model(train(cfg)["checkpoint"], device="cpu")
    return model, int(cfg.data.object_size)


# -- evaluation -------------------------------------------------------------------
def _split(images: list[AnnotatedImage]) -> tuple[list, list]:
    """Halves of the held-out images for fitting and testing the probes."""
    return images[0::2], images[1::2]


def _object_features(model, images, size: int) -> tuple[np.ndarray, np.ndarray]:
    items = [(im.path, tuple(box)) for im in images for box in im.boxes]
    labels = np.concatenate([im.category_ids for im in images])
    feats = embed_crops(model, items, image_size=size, features=True)["features"]
    return feats, labels


def _presence(images: list[AnnotatedImage], classes: np.ndarray) -> np.ndarray:
    return np.stack([np.isin(classes, im.category_ids) for im in images]).astype(np.int64)


def evaluate(
    model: pl.LightningModule,
    images: list[AnnotatedImage],
    out_dir: Path,
    size: int,
    scene_crops: int,
) -> dict[str, Any]:
    """All metrics of one model, and the raw values the chance bands need."""
    norms = norms_vs_objects(
        model, images, out_dir / "norms", image_size=size, scene_crops=scene_crops
    )
    with open(norms["norms_csv"]) as f:
        rows = list(csv.DictReader(f))
    ooc = out_of_context_scores(model, images, out_dir / "ooc", image_size=size)
    with open(ooc["csv"]) as f:
        ooc_rows = list(csv.DictReader(f))
    raw = {
        kind: (
            np.array([float(r["norm_fraction"]) for r in rows if r["kind"] == kind]),
            np.array([int(r["n_objects"]) for r in rows if r["kind"] == kind]),
        )
        for kind in ("image", "crop")
    }
    raw["ooc"] = (
        np.array([float(r["distance"]) for r in ooc_rows]),
        np.array([int(r["out_of_context"]) for r in ooc_rows]),
    )
    fit, test = _split(images)
    fit_x, fit_y = _object_features(model, fit, size)
    test_x, test_y = _object_features(model, test, size)
    classes = np.unique(np.concatenate([fit_y, test_y]))
    to_index = {c: i for i, c in enumerate(classes)}
    fit_y = np.array([to_index[c] for c in fit_y])
    test_y = np.array([to_index[c] for c in test_y])
    scene_fit = embed_images(model, fit, image_size=size, features=True)["features"]
    scene_test = embed_images(model, test, image_size=size, features=True)["features"]
    present_fit, present_test = _presence(fit, classes), _presence(test, classes)
    metrics = {
        "rho_images": _rho(*raw["image"]),
        "rho_crops": _rho(*raw["crop"]) if len(raw["crop"][0]) else math.nan,
        "ooc_auroc": auroc(*raw["ooc"]),
        "knn_top1": knn_top1(fit_x, fit_y, test_x, test_y),
        "linear_top1": linear_probe_top1(fit_x, fit_y, test_x, test_y),
        "scene_map": multilabel_map(scene_fit, present_fit, scene_test, present_test),
    }
    majority = float(np.bincount(test_y).max() / len(test_y))
    chance = {
        "knn_top1": majority,
        "linear_top1": majority,
        "scene_map": float(present_test.mean()),
    }
    return {"metrics": metrics, "raw": raw, "chance": chance, "plots": (norms["plot"], ooc["grid"])}


def _rho(values: np.ndarray, counts: np.ndarray) -> float:
    if len(np.unique(counts)) < 2:
        return math.nan
    return float(stats.spearmanr(counts, values).statistic)


def chance_bands(result: dict[str, Any], n_permutations: int) -> dict[str, tuple[float, float]]:
    """95 % permutation bands of ρ and AUROC (rank statistics: one set of values serves)."""
    raw = result["raw"]
    bands = {
        "rho_images": permutation_band(_rho, *raw["image"], n_permutations=n_permutations),
        "ooc_auroc": permutation_band(auroc, *raw["ooc"], n_permutations=n_permutations),
    }
    if len(raw["crop"][0]):
        bands["rho_crops"] = permutation_band(_rho, *raw["crop"], n_permutations=n_permutations)
    return bands


# -- report -----------------------------------------------------------------------
def _cell(values: Sequence[float]) -> str:
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def table(results: dict[str, list[dict]], bands: dict, chance: dict, args) -> str:
    """The Markdown report: one row per arm, a chance row, and how it was made."""
    header = "| arm | " + " | ".join(title for title, _ in METRICS.values()) + " |"
    lines = [header, "|" + "---|" * (len(METRICS) + 1)]
    for arm in args.arms:
        cells = [_cell([r["metrics"][key] for r in results[arm]]) for key in METRICS]
        lam = {"untrained": "", "moco_v2": " (λ=0)", "hcl": f" (λ={args.lam:g})"}[arm]
        lines.append(f"| {arm}{lam} | " + " | ".join(cells) + " |")
    chance_cells = []
    for key, (_, kind) in METRICS.items():
        if kind == "band" and key in bands:
            low, high = bands[key]
            chance_cells.append(f"[{low:.3f}, {high:.3f}]")
        else:
            chance_cells.append(f"{chance.get(key, math.nan):.3f}")
    lines.append("| chance (95 % band / level) | " + " | ".join(chance_cells) + " |")
    if "hcl" in results and "moco_v2" in results:
        cells = []
        for key in METRICS:
            diffs = [
                h["metrics"][key] - m["metrics"][key]
                for h, m in zip(results["hcl"], results["moco_v2"], strict=True)
            ]
            cells.append(f"{np.mean(diffs):+.3f} ({sum(d > 0 for d in diffs)}/{len(diffs)} > 0)")
        lines.append("| hcl − moco_v2, paired by seed (positive) | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"{args.seeds} seed(s) per arm (mean ± sd), {args.steps} steps, "
        f"{args.train_images} training / {args.eval_images} held-out scenes "
        f"({args.ooc_fraction:.0%} of them with one out-of-context object"
        f"{'; objects in random colours' if args.random_colours else ''}"
        f"{'; each object its own look' if args.appearance == 'instance' else ''}"
        f"{'; held-out scene family of benchmarks/heldout_scenes.py' if args.family == 'heldout' else ''}), "
        f"{args.permutations} permutations; overrides: {' '.join(args.override) or 'none'}.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick and args.data_root is None:
        args.data_root = Path(tempfile.mkdtemp(prefix="hcl_reproduce_"))
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    images = read_coco(*eval_data(args))
    results: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    rows = []
    for seed in range(args.seeds):
        for arm in args.arms:
            model, size = build_model(args, arm, seed)
            out_dir = args.out / "eval" / f"{arm}-seed{seed}"
            result = evaluate(model, images, out_dir, size, args.scene_crops)
            results[arm].append(result)
            rows.append({"arm": arm, "seed": seed, **result["metrics"]})
            print(f"reproduce: {arm} seed {seed}: {json.dumps(result['metrics'])}", flush=True)
            if seed == 0:
                for plot in result["plots"]:
                    shutil.copy(plot, args.out / f"{arm}_{Path(plot).name}")
    first = results[args.arms[0]][0]
    report = table(results, chance_bands(first, args.permutations), first["chance"], args)
    report += f"\nTotal time: {time.perf_counter() - start:.0f} s.\n"
    (args.out / "reproduce.md").write_text(report)
    with open(args.out / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["arm", "seed", *METRICS])
        writer.writeheader()
        writer.writerows(rows)
    print(report)
    print(f"report={args.out / 'reproduce.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
