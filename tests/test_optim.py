"""attach_parameters: every configure_optimizers format, no-decay split, schedulers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hcl_lightning.optim import attach_parameters


def setup_params():
    base = nn.Linear(3, 3)
    extra = nn.Parameter(torch.ones(2))
    scale = nn.Parameter(torch.zeros(()))
    return base, extra, scale


def groups_of(optimizer):
    return {id(p): g for g in optimizer.param_groups for p in g["params"]}


@pytest.mark.parametrize("form", ["optimizer", "list", "tuple", "dict", "list_of_dicts"])
def test_missing_parameters_join_the_first_optimizer(form: str) -> None:
    base, extra, scale = setup_params()
    optimizer = torch.optim.SGD(base.parameters(), lr=0.1, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    conf = {
        "optimizer": optimizer,
        "list": [optimizer],
        "tuple": ([optimizer], [scheduler]),
        "dict": {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler}},
        "list_of_dicts": [{"optimizer": optimizer, "lr_scheduler": scheduler}],
    }[form]
    assert attach_parameters(conf, [extra, scale], no_weight_decay=[scale]) is conf
    groups = groups_of(optimizer)
    assert groups[id(extra)]["weight_decay"] == 1e-4
    assert groups[id(scale)]["weight_decay"] == 0.0
    assert groups[id(scale)]["lr"] == 0.1
    if form in ("tuple", "dict", "list_of_dicts"):
        optimizer.step()
        scheduler.step()
        assert [g["lr"] for g in optimizer.param_groups] == [0.05, 0.05]


def test_parameters_already_optimised_are_not_duplicated_but_lose_weight_decay() -> None:
    model = nn.Module()
    model.base, model.extra, model.scale = setup_params()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-4)
    attach_parameters(optimizer, [model.extra, model.scale], no_weight_decay=[model.scale])
    counted = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert len(counted) == len(set(counted)) == 4
    assert groups_of(optimizer)[id(model.scale)]["weight_decay"] == 0.0
    assert groups_of(optimizer)[id(model.extra)]["weight_decay"] == 1e-4


def test_frozen_parameters_are_not_attached() -> None:
    base, extra, _ = setup_params()
    extra.requires_grad_(False)
    optimizer = torch.optim.SGD(base.parameters(), lr=0.1)
    attach_parameters(optimizer, [extra])
    assert id(extra) not in groups_of(optimizer)
