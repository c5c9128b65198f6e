"""One progress bar for every long loop in smcdiff (SMC steps, tempering, Gibbs sweeps).

Shown when asked (``progress=True``) or, by default, only when stderr is a terminal and the
loop is long enough to be worth watching; silent in scripts, CI logs and pipes. tqdm is
imported only when a bar is shown.
"""

from __future__ import annotations

import sys
from typing import Any


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(
    progress: bool | None, *, total: int | None = None, desc: str = "", unit: str = "step",
    min_total: int = 20,
) -> Any:
    """A tqdm bar, or a do-nothing stand-in with the same ``update`` / ``close``.

    Args:
        progress: ``True`` / ``False`` to force, ``None`` for automatic (a terminal and
            ``total`` unknown or at least ``min_total``).
        total: expected number of updates, if known.
    """
    show = progress
    if show is None:
        show = sys.stderr.isatty() and (total is None or total >= min_total)
    if not show:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency; stay usable without it all the same
        return _NoBar()
    return tqdm(total=total, desc=desc, unit=unit)
