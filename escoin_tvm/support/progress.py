"""What a compile shows while it runs: one progress bar (tqdm) over its stages and the model's
convolutions, on stderr; by default only when stderr is a terminal."""
from __future__ import annotations

import sys
from typing import Optional


class CompileProgress:
    """``stage(name)`` for each step, ``layer()`` for each convolution the pass decides on,
    ``kernels(count, total)`` as kernels compiled together finish, ``close()`` at the end;
    nothing is shown when disabled."""

    def __init__(self, enabled: Optional[bool] = None, stages: int = 3):
        from tqdm import tqdm

        if enabled is None:
            enabled = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self.bar = tqdm(total=stages, desc="escoin compile", unit="step", file=sys.stderr,
                        disable=not enabled, leave=False, dynamic_ncols=True)
        self._kernels = 0  # the kernels to compile that ``kernels`` added to the total

    def stage(self, name: str, layers: int = 0) -> None:
        """Starts a stage; ``layers`` adds the convolutions it will go through to the total."""
        if layers:
            self.bar.total += layers
        self.bar.set_description_str(f"escoin compile: {name}", refresh=False)
        self.bar.update(1)

    def layer(self) -> None:
        self.bar.update(1)

    def kernels(self, count: int, total: int) -> None:
        """``count`` more of ``total`` kernels compiled (``build_together``'s ``on_compiled``);
        the first call adds ``total`` to the bar's."""
        if not self._kernels:
            self._kernels = total
            self.bar.total += total
        self.bar.update(count)

    def close(self) -> None:
        self.bar.close()
