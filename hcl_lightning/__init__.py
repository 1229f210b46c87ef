"""hcl_lightning: Hyperbolic Contrastive Learning as a drop-in add-on for lightly baselines.

Public API (the README shows the three entry points):

- the add-on: :class:`HCLMixin` (``class MyHCL(HCLMixin, MyLightlyBaseline)``)
- :mod:`hcl_lightning.hyperbolic`: :class:`PoincareProjectionHead`,
  :class:`HyperbolicInfoNCELoss` (with its :class:`HyperbolicKeyQueue`), the distances
  :func:`poincare_pairwise_distance`, :func:`poincare_distance`
- :mod:`hcl_lightning.callbacks`: :class:`HyperbolicMonitor`, :class:`LambdaWarmup`,
  :class:`NonFiniteGuard`, :class:`OnlineProbes`, ...
- :mod:`hcl_lightning.data`: :class:`~hcl_lightning.data.HCLDataModule` and its parts
"""

import importlib
import importlib.abc
import importlib.util
import sys

# data first: its __init__ re-exports DataHygieneMonitor from callbacks, whose module
# imports data.images and data.boxes.
import hcl_lightning.data  # noqa: F401, I001
from hcl_lightning.callbacks import (
    HyperbolicMonitor,
    LambdaWarmup,
    NonFiniteGuard,
    OnlineProbes,
)
from hcl_lightning.hyperbolic import (
    HyperbolicInfoNCELoss,
    HyperbolicKeyQueue,
    PoincareProjectionHead,
    hyperbolic_negative_logsumexp,
    poincare_distance,
    poincare_pairwise_distance,
)
from hcl_lightning.mixin import HCLMixin

__all__ = [
    "HCLMixin",
    "HyperbolicInfoNCELoss",
    "HyperbolicKeyQueue",
    "HyperbolicMonitor",
    "LambdaWarmup",
    "NonFiniteGuard",
    "OnlineProbes",
    "PoincareProjectionHead",
    "hyperbolic_negative_logsumexp",
    "poincare_distance",
    "poincare_pairwise_distance",
]
__version__ = "0.1.0"

#: Modules that moved, by their old path. Importing an old path gives the module at its
#: new path (the same module object), so old imports and Hydra ``_target_`` strings work.
MOVED_MODULES = {
    "hcl_lightning.geometry": "hcl_lightning.hyperbolic.geometry",
    "hcl_lightning.heads": "hcl_lightning.hyperbolic.heads",
    "hcl_lightning.losses": "hcl_lightning.hyperbolic.losses",
    "hcl_lightning.ops": "hcl_lightning.hyperbolic.queue_logsumexp",
    "hcl_lightning.queues": "hcl_lightning.hyperbolic.queues",
    "hcl_lightning.guards": "hcl_lightning.callbacks.nonfinite_guard",
    "hcl_lightning.probes": "hcl_lightning.callbacks.online_probes",
    "hcl_lightning.data.hygiene": "hcl_lightning.callbacks.data_hygiene",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path of :data:`MOVED_MODULES` and loads the module it moved to."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED_MODULES else None

    def create_module(self, spec):
        module = importlib.import_module(MOVED_MODULES[spec.name])
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module):
        # The import system has set module.__spec__ to the old path's spec: restore it.
        module.__spec__ = module.__spec__.loader_state


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())
