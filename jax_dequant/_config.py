"""Which implementation the public ops use: our kernels (default) or the jnp reference.

The reference is never a silent fallback. It runs only when asked for, with the
``JAX_DEQUANT_IMPLEMENTATION=reference`` environment variable or the
:func:`use_implementation` context manager. The choice is read when a function
is traced; ``jax.jit`` caches traces, so a function already traced keeps the
implementation it was traced with.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

IMPLEMENTATIONS = ("kernel", "reference")

_state = threading.local()


def _from_environment() -> str:
    value = os.environ.get("JAX_DEQUANT_IMPLEMENTATION", "kernel").strip().lower() or "kernel"
    if value not in IMPLEMENTATIONS:
        raise ValueError(
            f"JAX_DEQUANT_IMPLEMENTATION must be one of {IMPLEMENTATIONS}, got {value!r}"
        )
    return value


def current_implementation() -> str:
    """Returns the implementation that ops traced now will use.

    Returns:
        ``"kernel"`` (our FFI kernels) or ``"reference"`` (the jnp reference).
    """
    return getattr(_state, "implementation", None) or _from_environment()


@contextlib.contextmanager
def use_implementation(implementation: str) -> Iterator[None]:
    """Selects the implementation for ops traced inside the ``with`` block.

    Args:
        implementation: ``"kernel"`` or ``"reference"``.

    Yields:
        Nothing; the previous choice is restored on exit.

    Raises:
        ValueError: if ``implementation`` is not one of the two names.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}"
        )
    previous = getattr(_state, "implementation", None)
    _state.implementation = implementation
    try:
        yield
    finally:
        _state.implementation = previous
