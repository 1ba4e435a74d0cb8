"""petrel: small-file storage for AI training.

`import petrel` stays light (DataLoader workers import it): heavy modules load lazily.
`petrel.Client` is one of them: its module (and urllib3) loads on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from petrel.client import Client

__version__ = "0.1.0"
__all__ = ["Client", "__version__"]

# Public name -> the module that defines it, imported on first access (PEP 562).
_LAZY = {"Client": "petrel.client"}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'petrel' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
