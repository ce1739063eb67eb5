"""Optional progress bars: tqdm's when one is asked for and tqdm is installed (``pip install -e '.[bench]'``),
otherwise a silent stand-in with the same methods, so the library neither imports nor needs tqdm."""
from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from typing import Any

__all__ = ["progress_bar"]


class _SilentBar:
    """The part of tqdm's interface the library uses, doing nothing but iterate."""

    def __init__(self, iterable: Iterable | None):
        self._iterable = iterable

    def __iter__(self):
        return iter(self._iterable)

    def __enter__(self) -> _SilentBar:
        return self

    def __exit__(self, *exc_info) -> None:
        return None

    def update(self, n: int = 1) -> None:
        del n

    def set_postfix(self, *args, **kwargs) -> None:
        del args, kwargs


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, **options: Any):
    """``tqdm.auto.tqdm(iterable, **options)`` if ``enabled`` and tqdm is installed, else a silent bar.

    Args:
      iterable: what to iterate over (or None for a bar driven by ``update(n)``, used as a context manager).
      enabled: False gives the silent bar without importing tqdm.
      options: tqdm keyword arguments (``total``, ``desc``, ``initial``, ``leave`` ...).
    Returns:
      An object with ``__iter__``, ``__enter__``/``__exit__``, ``update(n)`` and ``set_postfix(dict)``.
    """
    if enabled and importlib.util.find_spec("tqdm") is not None:
        from tqdm.auto import tqdm

        return tqdm(iterable, **options)
    return _SilentBar(iterable)
