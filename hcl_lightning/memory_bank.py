"""lightly memory banks (MoCo queues) that checkpoints hold: :func:`persistent_bank`.

Shared by the baselines' queues (MoCo-v2, DenseCL) and the hyperbolic key queue
(:class:`~hcl_lightning.hyperbolic.queues.HyperbolicKeyQueue`).
"""

from __future__ import annotations

from lightly.models.modules.memory_bank import MemoryBankModule

__all__ = ["persistent_bank"]


def persistent_bank(bank: MemoryBankModule) -> MemoryBankModule:
    """Makes a lightly memory bank (a MoCo queue) part of the ``state_dict``.

    lightly registers ``bank`` and ``bank_ptr`` as non-persistent buffers; MoCo, DenseCL
    and the hyperbolic queue checkpoint their queues, so that a resumed run continues with them.

    Args:
        bank: the memory bank, changed in place.

    Returns:
        ``bank``.
    """
    bank.register_buffer("bank", bank.bank, persistent=True)
    bank.register_buffer("bank_ptr", bank.bank_ptr, persistent=True)
    return bank
