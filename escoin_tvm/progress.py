"""What a compile shows while it runs: one progress bar (tqdm) over its stages and the model's
convolutions, on stderr; by default only when stderr is a terminal."""
from __future__ import annotations

import sys
from typing import Optional


class CompileProgress:
    """``stage(name)`` for each step, ``layer()`` for each convolution the pass decides on,
    ``close()`` at the end; nothing is shown when disabled."""

    def __init__(self, enabled: Optional[bool] = None, stages: int = 3):
        from tqdm import tqdm

        if enabled is None:
            enabled = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self.bar = tqdm(total=stages, desc="escoin compile", unit="step", file=sys.stderr,
                        disable=not enabled, leave=False, dynamic_ncols=True)

    def stage(self, name: str, layers: int = 0) -> None:
        """Starts a stage; ``layers`` adds the convolutions it will go through to the total."""
        if layers:
            self.bar.total += layers
        self.bar.set_description_str(f"escoin compile: {name}", refresh=False)
        self.bar.update(1)

    def layer(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
