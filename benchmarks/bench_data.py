"""Throughput of the HCL crop pipeline against lightly's MoCo-v2 pipeline.

Both pipelines read the same synthetic JPEG scenes (``make_synthetic_scenes``,
``--images`` images of ``--image-size`` px, cached in a temporary folder) and produce
crops of the same side ``--size`` (the HCL scene crop: ``--scene-size``, default
``--size``):

- ``MoCo-v2`` (baseline): ``lightly.data.LightlyDataset`` with lightly's
  ``MoCoV2Transform(input_size=size)``: decode the image, 2 augmented views of the
  whole image (random resized crop, colour jitter, grayscale, blur, flip, normalise);
- ``HCL``: the loader of ``HCLDataModule(object_size=size, scene_size=scene_size)``,
  i.e. ``HCLDataset``: decode the image once, sample an object box and a scene around
  it (``SceneObjectSampler``), then 4 crops: 2 ``MoCoV2Transform`` views of the object
  region, the scene region and the object region, each resized with a light
  augmentation (``WeakAugmentation``: flip, colour jitter, normalise; with
  ``--fused-color-jitter`` the scene/object jitter is ``FusedColorJitter``).

Both DataLoaders use the same batch size, ``shuffle=True``, ``drop_last=True``,
``pin_memory=False``, ``--workers`` worker processes and persistent workers (when
workers > 0). For each worker count, both loaders first run one untimed pass (worker
start-up, page cache), then ``--passes`` timed full passes each, interleaved
(baseline, HCL, HCL, baseline, ...) in this one process so that the load of a shared
machine hits both alike. Throughput is decoded images per second (one image per
sample in both pipelines) over the median pass; the ratio HCL/baseline has the target
``>= 0.8``.

To explain the ratio, a per-image profile of the stages runs in the main process on
the same images (mean per image over one pass, ``time.perf_counter``; means, not
medians, as the scene and object costs vary with the region size): decoding
(``decode_image``), the box sampling (``ImageRecord.resolve`` + sampler), each step of
lightly's MoCo-v2 view transform (random resized crop, flips, colour jitter, grayscale,
blur, to-tensor, normalise; summed over the 2 views) on the whole image (baseline) and
on the object region (HCL), and the scene and object crops with their light
augmentation (``WeakAugmentation``).

On CPU the main process uses one torch thread by default (``--threads``; DataLoader
workers always use one), as in ``bench_step.py``. The load average is printed before
and after the run.

Usage::

    python benchmarks/bench_data.py                # 200 images of 256 px -> 64 px crops
    python benchmarks/bench_data.py --size 224     # crops of the paper's size
    python benchmarks/bench_data.py --scene-size 32  # scenes at half the object size
    python benchmarks/bench_data.py --fused-color-jitter  # data.crops.fused_color_jitter=true
    python benchmarks/bench_data.py --quick        # smoke run (< 30 s)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightly.data import LightlyDataset
from lightly.transforms import MoCoV2Transform
from lightly.transforms.torchvision_v2_compatibility import torchvision_transforms as T
from torch.utils.data import DataLoader

from hcl_lightning.data import (
    CropOptions,
    HCLDataModule,
    LoaderOptions,
    decode_image,
    make_synthetic_scenes,
)

PIPELINES = ("MoCo-v2", "HCL")
TARGET = 0.8
QUICK = {"images": 24, "image_size": 128, "size": 32, "batch_size": 8, "passes": 1, "workers": [0]}


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min)"


def make_images(args: argparse.Namespace) -> tuple[Path, Path]:
    root = args.data_root or Path(tempfile.gettempdir()) / "hcl_lightning_bench"
    return make_synthetic_scenes(
        Path(root) / f"scenes_{args.images}x{args.image_size}",
        n_images=args.images,
        image_size=args.image_size,
    )


def build_loaders(
    args: argparse.Namespace, image_dir: Path, ann_file: Path, workers: int
) -> tuple[dict[str, DataLoader], HCLDataModule]:
    datamodule = HCLDataModule(
        str(image_dir),
        ann_file=str(ann_file),
        batch_size=args.batch_size,
        object_size=args.size,
        scene_size=args.scene_size,
        crops=CropOptions(fused_color_jitter=args.fused_color_jitter),
        loader=LoaderOptions(num_workers=workers, pin_memory=False),
    )
    baseline = DataLoader(
        LightlyDataset(str(image_dir), transform=MoCoV2Transform(input_size=args.size)),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=False,
        persistent_workers=workers > 0,
    )
    return {PIPELINES[0]: baseline, PIPELINES[1]: datamodule.train_dataloader()}, datamodule


def timed_pass(loader: DataLoader) -> tuple[float, int]:
    """Seconds and samples of one full pass."""
    start = time.perf_counter()
    samples = 0
    for batch in loader:
        views = batch["views"] if isinstance(batch, dict) else batch[0]
        samples += views[0].shape[0]
    return time.perf_counter() - start, samples


def measure_workers(
    args: argparse.Namespace, image_dir: Path, ann_file: Path, workers: int
) -> dict[str, Any]:
    loaders, _ = build_loaders(args, image_dir, ann_file, workers)
    for loader in loaders.values():
        timed_pass(loader)  # warm-up: worker start-up, page cache
    times: dict[str, list[float]] = {name: [] for name in PIPELINES}
    samples = {}
    for repeat in range(args.passes):
        order = PIPELINES if repeat % 2 == 0 else PIPELINES[::-1]
        for name in order:
            seconds, samples[name] = timed_pass(loaders[name])
            times[name].append(seconds)
    rates = {name: samples[name] / statistics.median(times[name]) for name in PIPELINES}
    del loaders  # shuts the persistent workers down
    return {"workers": workers, "rates": rates, "samples": samples}


def _view_steps(transform: MoCoV2Transform) -> list:
    """The steps of lightly's MoCo-v2 view transform (both views use the same one)."""
    return transform.transforms[0].transform.transforms


def _step_name(step: Any) -> str:
    inner = step.transforms[0] if isinstance(step, T.RandomApply) else step
    return f"view: {type(inner).__name__}"


def _time_views(steps: list, image: Any, stages: dict[str, list[float]]) -> None:
    """Runs 2 views step by step, adding each step's seconds (both views) to ``stages``."""
    seconds = dict.fromkeys(map(_step_name, steps), 0.0)
    for _ in range(2):
        view = image
        for step in steps:
            start = time.perf_counter()
            view = step(view)
            seconds[_step_name(step)] += time.perf_counter() - start
    for name, value in seconds.items():
        stages.setdefault(name, []).append(value)


def profile_stages(
    args: argparse.Namespace, image_dir: Path, ann_file: Path
) -> dict[str, dict[str, float]]:
    """Mean milliseconds per image of each stage of each pipeline, in this process."""
    _, datamodule = build_loaders(args, image_dir, ann_file, workers=0)
    datamodule.setup("fit")
    dataset = datamodule.train_dataset
    transform = dataset.transform
    baseline_steps = _view_steps(MoCoV2Transform(input_size=args.size))
    hcl_steps = _view_steps(transform.views)
    stages: dict[str, dict[str, list[float]]] = {name: {} for name in PIPELINES}
    base, hcl = stages[PIPELINES[0]], stages[PIPELINES[1]]
    rng = np.random.default_rng(0)
    for record in dataset.records:
        start = time.perf_counter()
        image, scale = decode_image(record.path, dataset.max_image_pixels)
        decode = time.perf_counter() - start
        for times in (base, hcl):
            times.setdefault("decode", []).append(decode)
        start = time.perf_counter()
        crop = dataset.sampler.sample(record.resolve(*image.size, scale=scale), rng)
        hcl.setdefault("box sampling", []).append(time.perf_counter() - start)
        _time_views(baseline_steps, image, base)
        start = time.perf_counter()
        object_region = image.crop(crop.object_box)
        hcl.setdefault("object region crop", []).append(time.perf_counter() - start)
        _time_views(hcl_steps, object_region, hcl)
        start = time.perf_counter()
        transform.scene(image.crop(crop.scene_box))
        hcl.setdefault("scene: crop + light aug", []).append(time.perf_counter() - start)
        start = time.perf_counter()
        transform.object(object_region)
        hcl.setdefault("object: light aug", []).append(time.perf_counter() - start)
    return {
        pipeline: {name: 1000 * statistics.fmean(values) for name, values in times.items()}
        for pipeline, times in stages.items()
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(args: argparse.Namespace, results: list[dict[str, Any]], stages: dict) -> str:
    lines = [
        f"{args.images} synthetic JPEGs of {args.image_size} px -> crops of {args.size} px "
        f"(HCL scene {args.scene_size} px"
        f"{', fused scene/object colour jitter' if args.fused_color_jitter else ''}), "
        f"batch {args.batch_size}, median of {args.passes} full passes per pipeline "
        f"(interleaved), main-process torch threads {torch.get_num_threads()}",
        "",
        "| workers | MoCo-v2 images/s | HCL images/s | HCL crops/s | HCL/MoCo-v2 images/s | "
        f"target >= {TARGET} |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for result in results:
        base, hcl = (result["rates"][name] for name in PIPELINES)
        ratio = hcl / base
        lines.append(
            f"| {result['workers']} | {base:.1f} | {hcl:.1f} | {4 * hcl:.1f} | {ratio:.2f} | "
            f"{_verdict(ratio >= TARGET)} |"
        )
    if stages:
        base, hcl = (stages[name] for name in PIPELINES)
        names = list(dict.fromkeys([*base, *hcl]))
        base_ms, hcl_ms = sum(base.values()), sum(hcl.values())
        lines += [
            "",
            "Per-image stages, main process (mean ms per image over one pass; the view "
            "steps summed over the 2 views):",
            "",
            f"| stage | {PIPELINES[0]} ms | {PIPELINES[1]} ms |",
            "|---|---:|---:|",
            *(f"| {name} | {_ms(base.get(name))} | {_ms(hcl.get(name))} |" for name in names),
            f"| **sum** | **{base_ms:.3f}** | **{hcl_ms:.3f}** |",
            "",
            f"predicted HCL/MoCo-v2 images/s = {base_ms / hcl_ms:.2f}",
        ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="synthetic images")
    parser.add_argument("--image-size", type=int, default=256, help="side of the images")
    parser.add_argument("--size", type=int, default=64, help="side of the views and objects")
    parser.add_argument(
        "--scene-size", type=int, help="side of the HCL scene crops (default: --size)"
    )
    parser.add_argument(
        "--fused-color-jitter",
        action="store_true",
        help="HCL scene/object crops with FusedColorJitter (data.crops.fused_color_jitter=true)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--passes", type=int, default=6, help="timed passes per pipeline")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--no-profile", action="store_true", help="skip the stage profile")
    parser.add_argument("--data-root", type=Path, help="cache of the synthetic images")
    parser.add_argument(
        "--threads", type=int, default=1, help="main-process torch threads (0: torch's default)"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    if args.scene_size is None:
        args.scene_size = args.size
    if min(args.images, args.size, args.scene_size, args.batch_size, args.passes) < 1 or (
        args.image_size < 32
    ):
        parser.error("sizes and --passes must be >= 1, --image-size >= 32")
    if args.batch_size > args.images or min(args.workers) < 0 or args.threads < 0:
        parser.error("--batch-size must be <= --images; --workers and --threads >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    start = time.perf_counter()
    load_before = _load()
    image_dir, ann_file = make_images(args)
    torch.manual_seed(0)
    results = [measure_workers(args, image_dir, ann_file, w) for w in args.workers]
    stages = {} if args.no_profile else profile_stages(args, image_dir, ann_file)
    print(report(args, results, stages))
    print(f"\nload average: before {load_before}; after {_load()}")
    print(f"benchmark wall time: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
