"""Where hcl_lightning's messages go: stdout, and under ``hcl-train`` the run's log.

:data:`logger` (``hcl_lightning``) prints its INFO messages to stdout as plain lines
(a script, a notebook, a test), as ``print`` would. Under ``hcl-train``, Hydra
configures the root logger (the console and ``<output_dir>/train.log``, see
``conf/config.yaml``) after this logger and Lightning's (which print on their own when
logging was not configured at their import) were made: :func:`log_to_root` then hands
them to it, so that ``train.log`` holds the whole run's log and every line is printed
once.
"""

from __future__ import annotations

import logging
import re
import warnings

__all__ = ["LIBRARY_LOGGERS", "UNACTIONABLE", "log_to_root", "logger", "quiet_startup"]

#: Loggers that may print on their own (see the module's docstring).
LIBRARY_LOGGERS = ("hcl_lightning", "pytorch_lightning", "lightning_fabric")
#: Start of the messages of Lightning that no ``hcl-train`` user can act on: its
#: advertisements, a deprecation inside Lightning (newer torch), and its note on the
#: empty validation loader of a run without validation data.
UNACTIONABLE = (
    "💡 Tip:",
    "`isinstance(treespec, LeafSpec)` is deprecated",
    "Total length of `list` across ranks is zero",
)


class _Stdout(logging.Handler):
    """A handler printing plain messages to the *current* ``sys.stdout``, as ``print``
    does (so that redirections made after import, e.g. pytest's capture or W&B's
    console capture, see them as printed lines)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), flush=True)
        except Exception:  # noqa: BLE001  logging's convention: report, never raise
            self.handleError(record)


logger = logging.getLogger("hcl_lightning")
logger.setLevel(logging.INFO)
logger.addHandler(_Stdout())
logger.propagate = False


def log_to_root() -> None:
    """Removes the own handlers of :data:`LIBRARY_LOGGERS` and lets their messages
    propagate to the root logger's handlers (call after configuring logging)."""
    for name in LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        for handler in list(library.handlers):
            library.removeHandler(handler)
        library.propagate = True


def _actionable(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(UNACTIONABLE)


def quiet_startup() -> None:
    """Drops the :data:`UNACTIONABLE` messages: Lightning's log lines (a filter on its
    rank-zero logger) and warnings (by message)."""
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if _actionable not in rank_zero.filters:
        rank_zero.addFilter(_actionable)
    for message in UNACTIONABLE:
        warnings.filterwarnings("ignore", message=re.escape(message))
