"""Import-time warnings of optional packages kept off stderr: torchao (installed beside NeMo
AutoModel) warns on import about kernels built for other machines, and torch about its enum
registrations. They say nothing about the user's data, and prep's errors are one line."""

from __future__ import annotations

import logging

_NOISY = ("torchao", "torch.utils._pytree")


def quiet_import_warnings() -> None:
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.ERROR)
