"""Training-step time and peak memory of MoCo-v2 against HCL-MoCo-v2.

Both models have the same backbone, projection head, batch size, image size and queue
sizes (``queue_size`` for MoCo's two queues and, in HCL, also ``hcl_queue_size`` for
the hyperbolic queue); HCL adds ``hcl_lambda=0.1, hcl_tau=0.2, hcl_curvature=0.05``
(the paper's values). Scene, object and the two views all have the same side.

**Total step** (the headline numbers). Each model runs through a real
``pl.Trainer(max_steps=--steps)`` (no logger, checkpointing, progress bar or
summary) on fixed random input tensors: a MoCo batch ``([x0, x1], labels, index)``
and an HCL batch ``{"views": [x0, x1], "scene", "object", ...}`` built once and
yielded by a ``DataLoader(batch_size=None)`` without copying (no image decoding in
this part). A callback times ``on_train_batch_start`` to ``on_train_batch_end``,
which covers what Lightning does per step: ``training_step`` (EMA update, encoders,
losses, queue updates, ``self.log``), ``zero_grad``, backward, the SGD step and the
lr-scheduler step. The first step of every fit (optimiser state creation, lazy
initialisation) is not timed, and each model first runs one untimed warm-up fit
(not with ``--quick``). To let the load of a shared machine hit both models
alike, the fits are interleaved in ``--rounds`` rounds (MoCo then HCL, then HCL then
MoCo, ...) in this one process; the step time reported is the median over all
timed steps, and the ratio HCL/MoCo is that of the medians (the spread of the
per-round ratios is printed too).

**Peak memory**: the fits of the last round run one more step, which is not timed
but tracked:

- CPU: the peak of the live tensor storages that the step's ops allocate, counted by
  ``bench_loss``'s ``TorchDispatchMode`` tracker (activations, gradients, temporaries;
  not the weights, optimiser state and queues that exist before the step);
- GPU: ``torch.cuda.max_memory_allocated`` minus ``memory_allocated`` before the
  step (same meaning); the absolute ``max_memory_allocated`` is printed too.

**Breakdown of the HCL step**, timed by calling the pieces of ``HCLMoCoV2`` directly
(train mode, gradients reset outside the timed region), interleaved with the fits
(``--breakdown-repeats`` per round, median reported):

- (a) the baseline part, as in ``MoCoV2.training_step``: EMA update, online encoder
  on both views, momentum encoder (shuffle-BN) on both views, the two ``NTXentLoss``
  with their queues, backward;
- (b) the extra encoder passes of HCL: ``hcl_query(scene)`` (online backbone +
  projection head, forward and backward of its output) and ``hcl_key(object)``
  (momentum encoder, no gradient);
- (c) the hyperbolic part on precomputed projection features: ``hcl_head`` on the
  scene features (with gradient) and on the object features (without),
  ``hcl_criterion`` (queue negatives + queue update), backward of ``λ·L_hyp`` into
  the features and the head's parameters;
- rest: HCL step − (a) − (b) − (c): the optimiser and scheduler steps, Lightning's
  loop, ``self.log`` calls and what the split into separate backward passes hides;
- (d) data loading per batch, measured on its own: batches of ``HCLDataModule``
  (``num_workers=0``, so decoding and augmentation run in this process) over
  synthetic JPEG scenes of ``--data-image-size`` px (``make_synthetic_scenes``,
  cached in a temporary folder), mean over ``--data-batches`` batches. It is not part
  of the step time; with DataLoader workers it overlaps with the step.

Ratios and targets:

- HCL/MoCo step time. Paper (Ge et al., CVPR 2023): 0.757 s / 0.616 s = 1.23 per
  iteration on 4 P6000 GPUs. Counting an online forward+backward as 3 forward passes
  and a momentum forward as 1, MoCo does 2·3 + 2·1 = 8 encoder forwards per image and
  HCL 8 + 3 + 1 = 12 when all crops have the same side: 1.5 for encoder-bound steps.
- HCL overhead beyond the extra encoder passes: (c) / HCL step time, target ≤ 5 %.

**Speed options** (``--batched-forward``, ``--channels-last``, ``--compile [BACKEND]``):
each flag adds one more HCL-MoCo-v2 model, built with the same seed and with only that
option on (``hcl_batched_forward=True``: one online pass on ``[x0, x1, scene]`` and one
momentum pass on ``[x0, x1, object]``; ``channels_last=True``: model and input images
in ``torch.channels_last``, inputs converted in ``on_after_batch_transfer``, before the
timed region; ``compile_backbone=BACKEND``: both backbones compiled in place, default
``inductor``; compilation happens in the first, untimed step of the first fit). Its
fits join the interleaved rounds, and its step time is reported as a ratio to the
plain HCL-MoCo-v2 step of the same run (per-round ratios printed too). The breakdown
is of the plain HCL step only.

Timings use ``time.perf_counter`` (with ``torch.cuda.synchronize`` around each timed
region on GPU), float32. On CPU the default is one torch thread (``--threads``): on a
machine shared with other jobs, OpenMP threads wait for each other whenever one is
descheduled; on 2 cores under a load average of 5, a ResNet-18 forward+backward
(batch 32, 64 px) took a median 2.3 s with 2 threads against 0.40 s with 1, and
step times spread over 10x. ``--threads 0`` keeps torch's default. The load average
of the machine is printed before and after the run: absolute times move with the
load; ratios, measured interleaved, much less.

Usage::

    python benchmarks/bench_step.py          # ResNet-18, 64 px, batch 32, queues 4096, CPU
    python benchmarks/bench_step.py --quick  # smoke run (< 30 s)
    python benchmarks/bench_step.py --gpu    # ResNet-50, 224 px, batch 64, queues 65536, CUDA
    python benchmarks/bench_step.py --batched-forward --channels-last --compile
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightly.models.utils import update_momentum
from torch.utils.data import DataLoader, Dataset

from hcl_lightning.baselines import HCLMoCoV2, MoCoV2
from hcl_lightning.data import HCLDataModule, LoaderOptions, make_synthetic_scenes

HCL_ARGS = {"hcl_lambda": 0.1, "hcl_tau": 0.2, "hcl_curvature": 0.05}
PAPER_RATIO = 0.757 / 0.616
FLOP_RATIO = 12 / 8
OVERHEAD_TARGET = 0.05
MODELS = ("MoCo-v2", "HCL-MoCo-v2")
MIB = 2**20

# Sizes: CPU defaults, --gpu defaults, and --quick (which overrides both).
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "backbone": "resnet18",
        "image_size": 64,
        "batch_size": 32,
        "queue_size": 4096,
        "rounds": 6,
        "steps": 4,
        "breakdown_repeats": 2,
        "data_batches": 4,
        "data_images": 200,
        "data_image_size": 256,
    },
    "gpu": {
        "backbone": "resnet50",
        "image_size": 224,
        "batch_size": 64,
        "queue_size": 65536,
        "rounds": 4,
        "steps": 8,
        "breakdown_repeats": 5,
        "data_batches": 3,
        "data_images": 200,
        "data_image_size": 256,
    },
    "quick": {
        "backbone": "resnet18",
        "image_size": 32,
        "batch_size": 4,
        "queue_size": 64,
        "rounds": 1,
        "steps": 2,
        "breakdown_repeats": 1,
        "data_batches": 1,
        "data_images": 8,
        "data_image_size": 64,
    },
}


def _load_tracker() -> type:
    """``_LiveTensorMemory`` from ``bench_loss.py`` next to this file."""
    name = "_hcl_bench_loss"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).with_name("bench_loss.py")
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]._LiveTensorMemory


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min)"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Repeat(Dataset):
    """The same batch ``length`` times (use with ``DataLoader(batch_size=None)``)."""

    def __init__(self, batch: Any, length: int) -> None:
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        return self.batch


class StepTimer(pl.Callback):
    """Times training steps from batch start to batch end; optionally tracks memory.

    Steps with ``batch_idx < skip`` are not timed. With ``memory_step`` set, that step
    is not timed but its peak memory is measured (see the module docstring).
    """

    def __init__(self, device: torch.device, skip: int = 1, memory_step: int | None = None):
        self.device = device
        self.skip = skip
        self.memory_step = memory_step
        self.times: list[float] = []
        self.peak_mib: float | None = None
        self.total_peak_mib: float | None = None
        self._tracker: Any = None
        self._before = 0
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.memory_step:
            _synchronize(self.device)
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
                self._before = torch.cuda.memory_allocated(self.device)
            else:
                self._tracker = _load_tracker()()
                self._tracker.__enter__()
        _synchronize(self.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        _synchronize(self.device)
        elapsed = time.perf_counter() - self._start
        if batch_idx == self.memory_step:
            if self.device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(self.device)
                self.peak_mib = (peak - self._before) / MIB
                self.total_peak_mib = peak / MIB
            else:
                self._tracker.__exit__(None, None, None)
                self.peak_mib = self._tracker.peak / MIB
                self._tracker = None
        elif batch_idx >= self.skip:
            self.times.append(elapsed)


def variants(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The speed-option variants of HCL-MoCo-v2 ``args`` asks for: name -> model kwargs."""
    options = {
        "HCL +batched_forward": args.batched_forward and {"hcl_batched_forward": True},
        "HCL +channels_last": args.channels_last and {"channels_last": True},
        f"HCL +compile({args.compile})": args.compile and {"compile_backbone": args.compile},
    }
    return {name: kwargs for name, kwargs in options.items() if kwargs}


def build_models(args: argparse.Namespace) -> dict[str, pl.LightningModule]:
    """MoCo-v2, HCL-MoCo-v2 and the requested variants, all built from seed 0."""
    common = {
        "backbone": args.backbone,
        "small_input": args.small_input,
        "queue_size": args.queue_size,
        "batch_size": args.batch_size,
    }
    hcl = {**common, **HCL_ARGS, "hcl_queue_size": args.queue_size}
    builds = {MODELS[0]: (MoCoV2, common), MODELS[1]: (HCLMoCoV2, hcl)}
    for name, options in variants(args).items():
        builds[name] = (HCLMoCoV2, {**hcl, **options})
    models = {}
    for name, (cls, kwargs) in builds.items():
        torch.manual_seed(0)
        models[name] = cls(**kwargs)
    return models


def build_batches(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Fixed random inputs; the MoCo batch uses the very tensors of the HCL views."""
    generator = torch.Generator().manual_seed(0)
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    x0, x1, obj = (torch.randn(shape, generator=generator).to(device) for _ in range(3))
    scene_shape = (args.batch_size, 3, args.scene_size, args.scene_size)
    scene = torch.randn(scene_shape, generator=generator).to(device)
    index = torch.arange(args.batch_size, device=device)
    labels = torch.zeros(args.batch_size, dtype=torch.long, device=device)
    hcl_batch = {
        "views": [x0, x1],
        "scene": scene,
        "object": obj,
        "labels": labels,
        "index": index,
        "n_objects": torch.ones_like(labels),
    }
    batches = {MODELS[0]: ([x0, x1], labels, index), MODELS[1]: hcl_batch}
    return batches | {name: hcl_batch for name in variants(args)}


def fit(model: pl.LightningModule, batch: Any, steps: int, timer: StepTimer) -> None:
    """``steps`` training steps of ``model`` on ``batch`` through a real Trainer."""
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="gpu" if timer.device.type == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    loader = DataLoader(_Repeat(batch, steps), batch_size=None)
    with contextlib.redirect_stdout(io.StringIO()):  # the baselines print their lr
        trainer.fit(model, train_dataloaders=loader)


def breakdown_parts(
    model: HCLMoCoV2, batch: dict[str, Any], device: torch.device
) -> dict[str, Callable[[], None]]:
    """Closures running the parts (a), (b), (c) of an HCL step (see the docstring)."""
    x0, x1 = batch["views"]
    scene, obj = batch["scene"], batch["object"]
    momentum = float(model.hparams.momentum)
    with torch.no_grad():
        scene_features = model.hcl_query(scene)
        object_features = model.hcl_key(obj)
    query_grad = torch.randn_like(scene_features)
    scene_features.requires_grad_()

    def baseline() -> None:
        with torch.no_grad():
            for online, ema in model.momentum_pairs():
                update_momentum(online, ema, m=momentum)
        q0, q1 = model(x0), model(x1)
        k0, k1 = model.forward_momentum(x0), model.forward_momentum(x1)
        loss = 0.5 * (model.criterion_a(q0, k1) + model.criterion_b(q1, k0))
        loss.backward()

    def encoders() -> None:
        query = model.hcl_query(scene)
        model.hcl_key(obj)
        query.backward(query_grad)

    def hyperbolic() -> None:
        query = model.hcl_head(scene_features)
        with torch.no_grad():
            key = model.hcl_head(object_features)
        loss, _ = model.hcl_criterion(query, key, return_accuracy=True)
        (model.hcl_lambda * loss).backward()

    def reset() -> None:
        model.zero_grad(set_to_none=True)
        scene_features.grad = None

    parts = {"a": baseline, "b": encoders, "c": hyperbolic}
    return {name: _timed(fn, reset, device) for name, fn in parts.items()}


def _timed(fn: Callable[[], None], reset: Callable[[], None], device: torch.device):
    def run() -> float:
        reset()
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        elapsed = time.perf_counter() - start
        reset()
        return elapsed

    return run


def measure_data(args: argparse.Namespace) -> tuple[float, Path]:
    """Mean seconds per batch of ``HCLDataModule`` (num_workers=0) on synthetic scenes."""
    n_images = max(args.data_images, args.batch_size * args.data_batches)
    root = args.data_root or Path(tempfile.gettempdir()) / "hcl_lightning_bench"
    image_dir, ann_file = make_synthetic_scenes(
        Path(root) / f"scenes_{n_images}x{args.data_image_size}",
        n_images=n_images,
        image_size=args.data_image_size,
    )
    datamodule = HCLDataModule(
        str(image_dir),
        ann_file=str(ann_file),
        batch_size=args.batch_size,
        object_size=args.image_size,
        scene_size=args.scene_size,
        loader=LoaderOptions(num_workers=0, pin_memory=False),
    )
    torch.manual_seed(0)
    batches = iter(datamodule.train_dataloader())
    next(batches)  # warm-up
    start = time.perf_counter()
    for _ in range(args.data_batches):
        next(batches)
    return (time.perf_counter() - start) / args.data_batches, image_dir


def run(args: argparse.Namespace) -> dict[str, Any]:
    """All measurements; returns what :func:`report` prints."""
    device = torch.device("cuda" if args.gpu and torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    models = build_models(args)
    batches = build_batches(args, device)
    hcl = models[MODELS[1]]
    model_names = list(models)
    times: dict[str, list[float]] = {name: [] for name in model_names}
    round_ratios = []
    variant_ratios: dict[str, list[float]] = {name: [] for name in model_names[2:]}
    parts: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    timed_parts = None
    memory = {}
    if not args.quick:  # one-time costs (oneDNN/cuDNN kernel selection, allocator growth)
        for name in model_names:
            fit(models[name], batches[name], 2, StepTimer(device, skip=2))
    for round_index in range(args.rounds):
        order = model_names if round_index % 2 == 0 else model_names[::-1]
        last = round_index == args.rounds - 1
        round_medians = {}
        for name in order:
            # The last round adds one untimed step whose peak memory is measured.
            timer = StepTimer(device, skip=1, memory_step=args.steps if last else None)
            fit(models[name], batches[name], args.steps + last, timer)
            times[name] += timer.times
            round_medians[name] = statistics.median(timer.times)
            if last:
                memory[name] = (timer.peak_mib, timer.total_peak_mib)
        round_ratios.append(round_medians[MODELS[1]] / round_medians[MODELS[0]])
        for name, ratios in variant_ratios.items():
            ratios.append(round_medians[name] / round_medians[MODELS[1]])
        hcl.to(device).train()  # Lightning moves the model back to the CPU after fit
        if timed_parts is None:
            timed_parts = breakdown_parts(hcl, batches[MODELS[1]], device)
            for run_part in timed_parts.values():  # warm-up
                run_part()
        for repeat in range(args.breakdown_repeats):
            names = (
                list(timed_parts) if (round_index + repeat) % 2 == 0 else list(timed_parts)[::-1]
            )
            for name in names:
                parts[name].append(timed_parts[name]())
    data_time, image_dir = measure_data(args)
    return {
        "device": device,
        "step": {name: statistics.median(ts) for name, ts in times.items()},
        "step_min": {name: min(ts) for name, ts in times.items()},
        "n_steps": {name: len(ts) for name, ts in times.items()},
        "round_ratios": round_ratios,
        "variant_ratios": variant_ratios,
        "parts": {name: statistics.median(ts) for name, ts in parts.items()},
        "n_parts": len(parts["a"]),
        "memory": memory,
        "data": data_time,
        "data_dir": image_dir,
    }


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    """Markdown tables and the ratios."""
    device, step, parts = results["device"], results["step"], results["parts"]
    batch = args.batch_size
    stem = "CIFAR stem" if args.small_input else "standard stem"
    lines = [
        f"{args.backbone} ({stem}), {args.image_size} px views and object, {args.scene_size} px "
        f"scene, batch {batch}, "
        f"queues {args.queue_size}, float32, device {device}, torch threads "
        f"{torch.get_num_threads()}",
        f"step: real pl.Trainer, median of {results['n_steps'][MODELS[0]]} timed steps per "
        f"model over {args.rounds} interleaved rounds; peak: "
        + (
            "cuda max_memory_allocated during one warm step, on top of what existed before"
            if device.type == "cuda"
            else "live tensor storage allocated by one warm step (TorchDispatchMode tracker)"
        ),
        "",
        "| model | step ms (median) | step ms (min) | images/s | step peak MiB |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in step:
        peak, _ = results["memory"][name]
        lines.append(
            f"| {name} | {1000 * step[name]:.1f} | {1000 * results['step_min'][name]:.1f} | "
            f"{batch / step[name]:.1f} | {peak:.1f} |"
        )
    if device.type == "cuda":
        totals = ", ".join(f"{n} {results['memory'][n][1]:.0f}" for n in step)
        lines.append(f"\nabsolute max_memory_allocated (MiB, models and queues included): {totals}")
    hcl_step = step[MODELS[1]]
    rest = hcl_step - sum(parts.values())
    data = results["data"]
    lines += [
        "",
        f"Breakdown of the HCL step (median of {results['n_parts']} direct calls each):",
        "",
        "| part | ms | share of HCL step |",
        "|---|---:|---:|",
        f"| (a) baseline: EMA, 2 views online fwd+bwd + momentum fwd, 2 NTXent + queues | "
        f"{1000 * parts['a']:.1f} | {parts['a'] / hcl_step:.1%} |",
        f"| (b) extra encoder passes: scene online fwd+bwd, object momentum fwd | "
        f"{1000 * parts['b']:.1f} | {parts['b'] / hcl_step:.1%} |",
        f"| (c) Poincaré head + hyperbolic loss + queue, fwd+bwd | "
        f"{1000 * parts['c']:.1f} | {parts['c'] / hcl_step:.1%} |",
        f"| rest: optimiser + scheduler, Lightning loop, logging (HCL step − a − b − c) | "
        f"{1000 * rest:.1f} | {rest / hcl_step:.1%} |",
        f"| (d) data loading per batch, HCLDataModule, num_workers=0 (not in the step) | "
        f"{1000 * data:.1f} | ({data / hcl_step:.0%}) |",
        "",
        f"(d): {args.data_batches} batches of {batch} from {args.data_image_size}-px synthetic "
        f"JPEGs, {batch / data:.1f} images/s in the main process.",
    ]
    ratio = hcl_step / step[MODELS[0]]
    overhead = parts["c"] / hcl_step
    low, high = min(results["round_ratios"]), max(results["round_ratios"])
    lines += [
        "",
        f"HCL/MoCo step time = {ratio:.2f} (per-round {low:.2f}-{high:.2f}; paper "
        f"0.757/0.616 = {PAPER_RATIO:.2f} on 4 P6000 GPUs; encoder-FLOP estimate "
        f"{FLOP_RATIO:.2f})",
        f"extra encoder passes (b) / MoCo step = {parts['b'] / step[MODELS[0]]:.2f}",
        f"HCL overhead beyond the extra encoder passes = (c)/HCL step = {overhead:.1%} "
        f"(target <= {OVERHEAD_TARGET:.0%}): {_verdict(overhead <= OVERHEAD_TARGET)}",
    ]
    if results["variant_ratios"]:
        lines += [
            "",
            "Speed options, step time against the plain HCL-MoCo-v2 step of this run "
            "(< 1: faster):",
            "",
            "| variant | step ms (median) | variant / HCL | per-round ratios |",
            "|---|---:|---:|---|",
        ]
        for name, ratios in results["variant_ratios"].items():
            lines.append(
                f"| {name} | {1000 * step[name]:.1f} | {step[name] / hcl_step:.2f} | "
                f"{', '.join(f'{r:.2f}' for r in ratios)} |"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="CUDA; ResNet-50 at 224 px defaults")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--backbone", help="torchvision ResNet name")
    parser.add_argument("--image-size", type=int, help="side of views, scene and object")
    parser.add_argument("--scene-size", type=int, help="side of the scene (default: --image-size)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--queue-size", type=int, help="MoCo queues and hyperbolic queue")
    parser.add_argument("--small-input", action="store_true", help="CIFAR-style stem")
    parser.add_argument("--rounds", type=int, help="interleaved rounds of fits")
    parser.add_argument("--steps", type=int, help="steps per fit (the first is not timed)")
    parser.add_argument("--breakdown-repeats", type=int, help="breakdown calls per round")
    parser.add_argument("--data-batches", type=int, help="batches timed for (d)")
    parser.add_argument("--data-images", type=int, help="synthetic images for (d)")
    parser.add_argument("--data-image-size", type=int, help="side of the synthetic images")
    parser.add_argument("--data-root", type=Path, help="cache of the synthetic images")
    parser.add_argument(
        "--batched-forward", action="store_true", help="add HCL with hcl_batched_forward"
    )
    parser.add_argument("--channels-last", action="store_true", help="add HCL with channels_last")
    parser.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        metavar="BACKEND",
        help="add HCL with compile_backbone=BACKEND (default inductor; e.g. aot_eager)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: 1 on CPU, torch's default with --gpu; 0: torch's default)",
    )
    args = parser.parse_args(argv)
    preset = PRESETS["quick" if args.quick else "gpu" if args.gpu else "cpu"]
    for name, value in preset.items():
        if args.quick or getattr(args, name) is None:
            setattr(args, name, value)
    args.scene_size = args.scene_size or args.image_size
    if args.batched_forward and args.scene_size != args.image_size:
        parser.error("--batched-forward needs --scene-size equal to --image-size")
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the first step of each fit is not timed)")
    sizes = (args.image_size, args.scene_size, args.batch_size, args.queue_size, args.rounds)
    if min(*sizes, args.breakdown_repeats, args.data_batches) < 1:
        parser.error("sizes, --rounds, --breakdown-repeats and --data-batches must be >= 1")
    if args.gpu and not torch.cuda.is_available():
        parser.error("--gpu given but CUDA is not available")
    if args.threads is None:
        args.threads = 0 if args.gpu else 1
    if args.threads < 0:
        parser.error("--threads must be >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    start = time.perf_counter()
    load_before = _load()
    results = run(args)
    print(report(results, args))
    print(f"\nload average: before {load_before}; after {_load()}")
    print(f"benchmark wall time: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
