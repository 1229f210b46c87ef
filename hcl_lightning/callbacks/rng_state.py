"""RNG states in checkpoints: :class:`RNGStateCheckpoint`."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import _collect_rng_states, _set_rng_states
from typing_extensions import override

__all__ = ["RNGStateCheckpoint"]


class RNGStateCheckpoint(pl.Callback):
    """Saves the torch, numpy and Python RNG states (and CUDA's) in every checkpoint.

    On resume they are restored as soon as the checkpoint is loaded, before the data
    loader of the resumed epoch draws its shuffling seed, so shuffling and augmentations
    continue as in an uninterrupted run when the checkpoint was written at the end of an
    epoch (a mid-epoch checkpoint restarts its epoch's data; see the distributed page of
    the docs). Under DDP the states of rank 0, which writes the checkpoint, are restored
    on every rank. The state holds tensors and numbers only (loadable with
    ``torch.load(weights_only=True)``).

    Example:
        >>> trainer = pl.Trainer(callbacks=[RNGStateCheckpoint()])
        >>> trainer.fit(model, datamodule=datamodule, ckpt_path="last.ckpt")
    """

    @override
    def state_dict(self) -> dict[str, Any]:
        states = _collect_rng_states(include_cuda=torch.cuda.is_available())
        if "numpy" in states:  # its array as a tensor: loadable with weights_only=True
            kind, keys, pos, has_gauss, gauss = states["numpy"]
            states["numpy"] = (kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss)
        return {"rng_states": states}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = dict(state_dict.get("rng_states", {}))
        if "torch.cuda" in states and not torch.cuda.is_available():
            states.pop("torch.cuda")
        if "numpy" in states:
            kind, keys, pos, has_gauss, gauss = states["numpy"]
            states["numpy"] = (kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss)
        if states:
            _set_rng_states(states)
