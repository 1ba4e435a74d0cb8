"""petrel: small-file storage for AI training.

`import petrel` stays light (DataLoader workers import it): heavy modules load lazily.
"""

from __future__ import annotations

__version__ = "0.1.0"
