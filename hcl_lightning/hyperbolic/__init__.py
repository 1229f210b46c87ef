"""The hyperbolic part of HCL; needs only torch, geoopt and lightly's memory bank.

- :mod:`~hcl_lightning.hyperbolic.geometry`: the formulas (Poincaré distances, arcosh
  forms, ball norms), stateless;
- :mod:`~hcl_lightning.hyperbolic.queue_logsumexp`: the fused log-sum-exp of the
  negatives' logits (an autograd function);
- :mod:`~hcl_lightning.hyperbolic.heads`: :class:`PoincareProjectionHead`;
- :mod:`~hcl_lightning.hyperbolic.losses`: :class:`HyperbolicInfoNCELoss`;
- :mod:`~hcl_lightning.hyperbolic.queues`: :class:`HyperbolicKeyQueue`.
"""

from hcl_lightning.hyperbolic.geometry import poincare_distance, poincare_pairwise_distance
from hcl_lightning.hyperbolic.heads import PoincareProjectionHead
from hcl_lightning.hyperbolic.losses import HyperbolicInfoNCELoss
from hcl_lightning.hyperbolic.queue_logsumexp import hyperbolic_negative_logsumexp
from hcl_lightning.hyperbolic.queues import HyperbolicKeyQueue

__all__ = [
    "HyperbolicInfoNCELoss",
    "HyperbolicKeyQueue",
    "PoincareProjectionHead",
    "hyperbolic_negative_logsumexp",
    "poincare_distance",
    "poincare_pairwise_distance",
]
