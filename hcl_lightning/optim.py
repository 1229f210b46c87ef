"""Make sure extra parameters reach whatever optimiser a baseline configured."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pytorch_lightning.core.optimizer import _configure_optimizers
from torch import nn
from torch.optim import Optimizer

__all__ = ["attach_parameters"]


def attach_parameters(
    optim_conf: Any,
    parameters: Iterable[nn.Parameter],
    no_weight_decay: Iterable[nn.Parameter] = (),
) -> Any:
    """Add ``parameters`` to the optimiser(s) of a ``configure_optimizers`` result.

    Works for every return format Lightning accepts (parsed with Lightning's own
    parser). Parameters already in an optimiser stay where they are (a baseline that
    optimises ``self.parameters()`` already has them), except those in
    ``no_weight_decay``, which move to a group of their own with ``weight_decay=0``.
    Parameters missing from every optimiser join the first optimiser: decayed ones its
    first group, ``no_weight_decay`` ones their own group. Every learning-rate
    scheduler of that optimiser is extended to the new group (same base lr and, for
    ``LambdaLR``-style schedulers, the same lambda as the group it was split from), so
    warm-up and cosine decay apply to the new group as to the rest.

    Args:
        optim_conf: what the baseline's ``configure_optimizers`` returned.
        parameters: parameters that must be optimised.
        no_weight_decay: the subset to optimise without weight decay.

    Returns:
        ``optim_conf``, modified in place.
    """
    optimizers, scheduler_confs, _ = _configure_optimizers(optim_conf)
    if not optimizers:
        return optim_conf
    schedulers = [conf["scheduler"] if isinstance(conf, dict) else conf for conf in scheduler_confs]
    wanted = [p for p in parameters if p.requires_grad]
    no_decay_ids = {id(p) for p in no_weight_decay}
    placed = {id(p): opt for opt in optimizers for g in opt.param_groups for p in g["params"]}

    missing = [p for p in wanted if id(p) not in placed]
    first = optimizers[0]
    first.param_groups[0]["params"].extend(p for p in missing if id(p) not in no_decay_ids)
    for optimizer in optimizers:
        undecay = [
            p for p in wanted if id(p) in no_decay_ids and placed.get(id(p), first) is optimizer
        ]
        if undecay:
            _split_no_decay_group(optimizer, undecay, schedulers)
    return optim_conf


def _split_no_decay_group(optimizer: Optimizer, params: list[nn.Parameter], schedulers) -> None:
    """Move ``params`` into a new ``weight_decay=0`` group modelled on their old group."""
    ids = {id(p) for p in params}
    source_index = 0
    for index, group in enumerate(optimizer.param_groups):
        if any(id(p) in ids for p in group["params"]):
            source_index = index
            group["params"] = [p for p in group["params"] if id(p) not in ids]
    source = optimizer.param_groups[source_index]
    new_group = {key: value for key, value in source.items() if key != "params"}
    new_group.update(params=params, weight_decay=0.0)
    optimizer.add_param_group(new_group)
    for scheduler in schedulers:
        if getattr(scheduler, "optimizer", None) is not optimizer:
            continue
        scheduler.base_lrs.append(scheduler.base_lrs[source_index])
        lambdas = getattr(scheduler, "lr_lambdas", None)
        if lambdas is not None:
            lambdas.append(lambdas[source_index])
