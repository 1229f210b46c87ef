"""hcl_lightning: Hyperbolic Contrastive Learning as a drop-in add-on for lightly baselines.

Public API (see the README for the three entry points):

- geometry: :func:`poincare_pairwise_distance`, :func:`poincare_distance`
- heads: :class:`PoincareProjectionHead`
- losses: :class:`HyperbolicInfoNCELoss` (with its :class:`HyperbolicKeyQueue`)
- the add-on: :class:`HCLMixin` (``class MyHCL(HCLMixin, MyLightlyBaseline)``)
- callbacks: :class:`HyperbolicMonitor`, :class:`NonFiniteGuard`, :class:`OnlineProbes`
"""

from hcl_lightning.callbacks import HyperbolicMonitor
from hcl_lightning.geometry import poincare_distance, poincare_pairwise_distance
from hcl_lightning.guards import NonFiniteGuard
from hcl_lightning.heads import PoincareProjectionHead
from hcl_lightning.losses import HyperbolicInfoNCELoss
from hcl_lightning.mixin import HCLMixin
from hcl_lightning.ops import hyperbolic_negative_logsumexp
from hcl_lightning.probes import OnlineProbes
from hcl_lightning.queues import HyperbolicKeyQueue

__all__ = [
    "HCLMixin",
    "HyperbolicInfoNCELoss",
    "HyperbolicKeyQueue",
    "HyperbolicMonitor",
    "NonFiniteGuard",
    "OnlineProbes",
    "PoincareProjectionHead",
    "hyperbolic_negative_logsumexp",
    "poincare_distance",
    "poincare_pairwise_distance",
]
__version__ = "0.1.0"
