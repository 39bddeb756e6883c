"""What a compile shows while it runs: one progress bar (tqdm) over its stages and the model's
convolutions, on stderr; by default only when stderr is a terminal."""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Optional

import tvm


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

    @contextlib.contextmanager
    def building(self, name: str):
        """A last stage of unknown length (TVM's build): it counts as done when it ends, and
        meanwhile the bar names the pass TVM is running. Yields the pass instruments to run
        the build under (none when the bar is hidden)."""
        self.bar.set_description_str(f"escoin compile: {name}")
        yield [] if self.bar.disable else [_PassNames(self.bar)]
        self.bar.set_postfix_str("", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


@tvm.instrument.pass_instrument
class _PassNames:
    """Shows on ``bar`` the name of the pass running, at most every 0.2 s."""

    def __init__(self, bar):
        self.bar, self.shown = bar, 0.0

    def run_before_pass(self, _mod, info):
        now = time.monotonic()
        if now - self.shown >= 0.2:
            self.shown = now
            self.bar.set_postfix_str(info.name)
