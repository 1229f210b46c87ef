"""Lightning callbacks of hcl_lightning, one per module.

- :class:`HyperbolicMonitor`: ball norms of the scene and object embeddings (observes).
- :class:`LambdaWarmup`: linear warm-up of λ.
- :class:`NonFiniteGuard`: skips steps with a NaN/inf loss or gradient.
- :class:`OnlineProbes`: linear-probe and kNN accuracy of the frozen backbone.
- :class:`RNGStateCheckpoint`: RNG states in checkpoints.
- :class:`DataHygieneMonitor`: unreadable images and dropped boxes of a run.
- :class:`MetricHistory`: per-step metric values for a run's summary.
- :class:`RunConfigCheckpoint`: the resolved ``hcl-train`` config in checkpoints.
"""

from hcl_lightning.callbacks.data_hygiene import DataHygieneMonitor
from hcl_lightning.callbacks.hyperbolic_monitor import HyperbolicMonitor, ball_norm_fraction
from hcl_lightning.callbacks.lambda_warmup import LambdaWarmup
from hcl_lightning.callbacks.metric_history import MetricHistory
from hcl_lightning.callbacks.nonfinite_guard import NonFiniteGuard, NonFiniteLossError
from hcl_lightning.callbacks.online_probes import OnlineProbes
from hcl_lightning.callbacks.rng_state import RNGStateCheckpoint
from hcl_lightning.callbacks.run_config import RunConfigCheckpoint

__all__ = [
    "DataHygieneMonitor",
    "HyperbolicMonitor",
    "LambdaWarmup",
    "MetricHistory",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "OnlineProbes",
    "RNGStateCheckpoint",
    "RunConfigCheckpoint",
    "ball_norm_fraction",
]
