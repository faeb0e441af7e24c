"""Help for ``jax.export``: the safety checks that a module using our ops needs disabled.

``jax.export`` refuses to serialize custom calls whose targets JAX does not
guarantee to be stable, and every op of this package is a custom call to one of
our FFI targets. Their stability is ours to keep: an exported module runs in
any process that imported ``jax_dequant`` (which registers the targets) with a
build that has the same targets and FFI signatures.
"""

from __future__ import annotations

import jax

from jax_dequant import _native


def export_disabled_checks() -> list[jax.export.DisabledSafetyCheck]:
    """The ``disabled_checks`` that ``jax.export.export`` needs for our ops.

    One ``DisabledSafetyCheck.custom_call`` per FFI target of the library, so
    a function using any op of the package exports::

        exported = jax.export.export(
            jax.jit(fn), disabled_checks=jdq.export_disabled_checks()
        )(*args)
        blob = exported.serialize()
        # elsewhere, after `import jax_dequant`:
        jax.export.deserialize(blob).call(*args)

    The deserializing process must import ``jax_dequant`` first: that
    registers the FFI targets the module calls.

    Returns:
        The checks, sorted by target name.
    """
    return [
        jax.export.DisabledSafetyCheck.custom_call(name) for name in sorted(_native.FFI_TARGETS)
    ]
