"""Speed and memory of the hyperbolic InfoNCE loss against two references.

Measures one forward+backward pass (gradient with respect to the ``N`` queries only;
the ``K`` queue entries are constants), float32, of

- ``ours``: :class:`hcl_lightning.HyperbolicInfoNCELoss` (fused, chunked kernel),
  called as ``criterion(query, key)`` with its queue pre-filled with ``K`` ball points;
- ``euclidean``: lightly's ``NTXentLoss(memory_bank_size=(K, D))``, MoCo's InfoNCE
  over a queue of the same size (the target cost of ``ours``);
- ``broadcasting``: the form of the original HCL code, geoopt's
  ``PoincareBall(c).dist(q.unsqueeze(1), queue.unsqueeze(0))`` as ``(N, K)`` logits
  ``-d / tau`` with the positive prepended, then cross-entropy. It materialises
  ``N x K x D`` tensors (8 GiB each for the defaults), so it runs with fewer queries
  (``--broadcast-n``; by default the largest power of two whose estimated footprint
  fits in 6 GiB, or in 80 % of the free GPU memory) and its time and memory are scaled
  linearly to ``N`` (both are proportional to ``N`` there).

Ball points have uniform random directions and norms uniform in ``[0, 0.9]`` times the
ball radius ``1 / sqrt(c)``; temperature 0.2, curvature 0.05 (the paper's values).

All methods run in this process. ``ours`` and ``euclidean`` (the pair behind the time
ratio) build their inputs, run one warm-up pass each and then ``--repeats`` timed passes
interleaved (ours, euclidean, ours, ...), so machine load and allocator state affect
both alike; ``broadcasting`` runs afterwards on its own (``time.perf_counter``, median
reported; default torch thread count). Then each runs one more pass for peak memory,
reported as the memory that pass allocates on top of its inputs:

- CPU: the peak of the live tensor storages that the pass's ops allocate, counted by
  a ``TorchDispatchMode`` (each output storage that is not an input's, until it is
  freed; scratch memory internal to a single kernel is not seen). This is exact and
  repeatable, unlike the process's peak resident set size (``ru_maxrss``/``VmHWM``),
  which glibc's retention of freed blocks moved by up to ~90 MiB from run to run;
- GPU (``--gpu`` with CUDA available): ``torch.cuda.max_memory_allocated`` minus
  ``torch.cuda.memory_allocated`` before the pass, with CUDA synchronisation around
  the timed passes.

Targets: ``time ours / euclidean <= 1.3`` and ``memory broadcasting / ours >= 20``.

Usage::

    python benchmarks/bench_loss.py            # N=256, K=65536, D=128
    python benchmarks/bench_loss.py --quick    # small smoke run (a few seconds)
    python benchmarks/bench_loss.py --gpu
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

TEMPERATURE = 0.2
CURVATURE = 0.05
MAX_NORM_FRACTION = 0.9
METHODS = ("ours", "euclidean", "broadcasting")
# Peak memory of the broadcasting pass in units of one N x K x D float32 tensor (about 5.1
# measured on CPU with torch 2.14 / geoopt 0.5.1, rounded up); picks its number of queries.
BROADCAST_COPIES = 6
CPU_BROADCAST_BUDGET = 6 * 2**30
GPU_BROADCAST_FRACTION = 0.8
TIME_TARGET = 1.3
MEMORY_TARGET = 20.0
QUICK_SIZES = {"n": 32, "k": 4096, "d": 32, "repeats": 3, "broadcast_n": 8}
MIB = 2**20


@dataclass
class Result:
    """What was measured for one method."""

    method: str
    n_used: int
    device: str
    time_ms: float
    peak_mib: float
    memory_source: str


def _ball_points(rows: int, dim: int, device: torch.device) -> torch.Tensor:
    """Random directions with norms uniform in ``[0, MAX_NORM_FRACTION]`` of the radius."""
    directions = torch.nn.functional.normalize(torch.randn(rows, dim, device=device), dim=1)
    fraction = torch.rand(rows, 1, device=device) * MAX_NORM_FRACTION
    return directions * fraction / math.sqrt(CURVATURE)


def _broadcast_queries(n: int, k: int, d: int, device: torch.device) -> int:
    """Largest power of two <= ``n`` whose estimated broadcasting footprint fits."""
    if device.type == "cuda":
        budget = torch.cuda.mem_get_info(device)[0] * GPU_BROADCAST_FRACTION
    else:
        budget = CPU_BROADCAST_BUDGET
    per_query = BROADCAST_COPIES * k * d * 4
    n_used = 2 ** max(0, math.floor(math.log2(max(1.0, budget / per_query))))
    return min(n, n_used)


def _make_step(method: str, n: int, k: int, d: int, device: torch.device) -> Callable[[], None]:
    """Inputs for ``method`` and a closure running one forward+backward pass on them."""
    if method == "ours":
        from hcl_lightning import HyperbolicInfoNCELoss

        criterion = HyperbolicInfoNCELoss(
            temperature=TEMPERATURE, curvature=CURVATURE, queue_size=k, dim=d
        ).to(device)
        criterion.queue.bank.copy_(_ball_points(k, d, device))
        query = _ball_points(n, d, device).requires_grad_()
        key = _ball_points(n, d, device)

        def step() -> None:
            query.grad = None
            criterion(query, key).backward()

    elif method == "euclidean":
        from lightly.loss import NTXentLoss

        criterion = NTXentLoss(temperature=TEMPERATURE, memory_bank_size=(k, d)).to(device)
        query = torch.randn(n, d, device=device, requires_grad=True)
        key = torch.randn(n, d, device=device)

        def step() -> None:
            query.grad = None
            criterion(query, key).backward()

    elif method == "broadcasting":
        import geoopt

        ball = geoopt.PoincareBall(c=CURVATURE).to(device)
        queue = _ball_points(k, d, device)
        query = _ball_points(n, d, device).requires_grad_()
        key = _ball_points(n, d, device)
        labels = torch.zeros(n, dtype=torch.long, device=device)

        def step() -> None:
            query.grad = None
            positive = -ball.dist(query, key, keepdim=True) / TEMPERATURE
            negative = -ball.dist(query.unsqueeze(1), queue.unsqueeze(0)) / TEMPERATURE
            logits = torch.cat([positive, negative], dim=1)
            torch.nn.functional.cross_entropy(logits, labels).backward()

    else:
        raise ValueError(f"unknown method {method!r}")
    return step


class _LiveTensorMemory(TorchDispatchMode):
    """Peak bytes of the tensor storages that ops allocate while the mode is active.

    Each op output whose storage is none of the op's inputs' (views and in-place results
    are not allocations) counts until its storage is freed. Scratch memory that a single
    kernel allocates and frees internally is not seen.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0

    def _release(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        seen = {
            leaf.untyped_storage().data_ptr()
            for leaf in tree_leaves((args, kwargs))
            if isinstance(leaf, torch.Tensor)
        }
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if not isinstance(leaf, torch.Tensor):
                continue
            storage = leaf.untyped_storage()
            if storage.nbytes() and storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._release, storage.nbytes())
        return out


def _peak_mib(step: Callable[[], None], device: torch.device) -> tuple[float, str]:
    """Extra memory at the peak of a (warm) ``step()``, and how it was measured."""
    if device.type != "cuda":
        with _LiveTensorMemory() as tracker:
            step()
        return tracker.peak / MIB, "peak of live tensor storage (TorchDispatchMode tracker)"
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / MIB, "cuda max_memory_allocated"


def _device(gpu: bool) -> torch.device:
    return torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")


def measure(
    methods: tuple[str, ...], n: int, k: int, d: int, repeats: int, gpu: bool, broadcast_n: int
) -> dict[str, Result]:
    """Warm-up, timed passes interleaved across ``methods``, then a memory pass of each.

    Interleaving (``a b a b ...``) exposes the methods compared in one ratio to the same
    machine load and allocator state.
    """
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    device = _device(gpu)
    sizes = {
        method: broadcast_n if broadcast_n > 0 else _broadcast_queries(n, k, d, device)
        for method in methods
        if method == "broadcasting"
    }
    steps = {method: _make_step(method, sizes.get(method, n), k, d, device) for method in methods}

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for step in steps.values():
        step()  # warm-up
    times: dict[str, list[float]] = {method: [] for method in methods}
    for _ in range(repeats):
        for method, step in steps.items():
            synchronize()
            start = time.perf_counter()
            step()
            synchronize()
            times[method].append(time.perf_counter() - start)
    results = {}
    for method, step in steps.items():
        # Memory last: the CPU tracker slows the pass it watches.
        peak_mib, source = _peak_mib(step, device)
        median_ms = 1000 * statistics.median(times[method])
        results[method] = Result(
            method, sizes.get(method, n), str(device), median_ms, peak_mib, source
        )
    return results


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(results: dict[str, Result], n: int, k: int, d: int, repeats: int) -> str:
    """The markdown table and the two target ratios."""
    ours, euclidean, broadcast = (results[m] for m in METHODS)
    lines = [
        f"N={n} queries, K={k} queue entries, D={d}, float32, forward+backward "
        f"(gradient w.r.t. the queries), device {ours.device}, median of {repeats} runs",
        f"peak memory: {ours.memory_source}, one warm pass",
        "",
        f"| method | N used | time ms (per N={n}) | peak MiB (per N={n}) |",
        "|---|---:|---:|---:|",
    ]
    scaled: dict[str, tuple[float, float]] = {}
    for result in (ours, euclidean, broadcast):
        scale = n / result.n_used
        scaled[result.method] = (result.time_ms * scale, result.peak_mib * scale)
        note = f" (scaled x{scale:g})" if scale != 1 else ""
        time_ms, peak = scaled[result.method]
        lines.append(
            f"| {result.method} | {result.n_used} | {time_ms:.1f}{note} | {peak:.1f}{note} |"
        )
    if broadcast.n_used != n:
        lines += [
            "",
            f"broadcasting ran with N={broadcast.n_used} ({broadcast.time_ms:.1f} ms, "
            f"{broadcast.peak_mib:.1f} MiB measured); time and memory scaled linearly to N={n}.",
        ]
    time_ratio = scaled["ours"][0] / scaled["euclidean"][0]
    memory_ratio = scaled["broadcasting"][1] / scaled["ours"][1]
    lines += [
        "",
        f"time ours/euclidean = {time_ratio:.2f} (target <= {TIME_TARGET}): "
        f"{_verdict(time_ratio <= TIME_TARGET)}",
        f"memory broadcasting/ours = {memory_ratio:.1f} (target >= {MEMORY_TARGET:g}): "
        f"{_verdict(memory_ratio >= MEMORY_TARGET)}",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="queries per batch")
    parser.add_argument("--k", type=int, default=65536, help="queue entries (negatives)")
    parser.add_argument("--d", type=int, default=128, help="feature dimension")
    parser.add_argument("--repeats", type=int, default=10, help="timed passes per method")
    parser.add_argument(
        "--broadcast-n",
        type=int,
        default=0,
        help="queries for the broadcasting form (0: largest power of two that fits)",
    )
    parser.add_argument("--gpu", action="store_true", help="use CUDA when available")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK_SIZES.items():
            setattr(args, name, value)
    if min(args.n, args.k, args.d, args.repeats) < 1 or args.broadcast_n < 0:
        parser.error("--n, --k, --d, --repeats must be >= 1 and --broadcast-n >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    common = (args.n, args.k, args.d, args.repeats, args.gpu, args.broadcast_n)
    results = measure(("ours", "euclidean"), *common)
    results.update(measure(("broadcasting",), *common))
    print(report(results, args.n, args.k, args.d, args.repeats))
    print(f"\nbenchmark wall time: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
