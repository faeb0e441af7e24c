"""The only place the package reaches into ``jax._src``, and why.

``jax.experimental.custom_partitioning`` needs the device assignment while
lowering (to build the mesh its callbacks see). ``jax.jit`` provides it only
when the jaxpr contains a primitive listed in
``jax._src.dispatch.prim_requires_devices_during_lowering``; JAX lists its own
``custom_partitioning_p`` there, but our primitives are lowered *to*
``custom_partitioning`` (``mlir.lower_fun``), so they must be listed too.
There is no public API for this (JAX's own cuDNN primitives and
TransformerEngine-JAX do the same). Second, :func:`sdy_sharding_rule_attribute`
(see there). Checked with jax 0.10.2 and 0.12.
"""

from __future__ import annotations

from typing import Any

import jax.extend

from jax._src import custom_partitioning_sharding_rule as _sharding_rule
from jax._src import dispatch as _dispatch


def require_devices_during_lowering(primitive: jax.extend.core.Primitive) -> None:
    """Makes ``jax.jit`` pass the device assignment when lowering ``primitive``."""
    _dispatch.prim_requires_devices_during_lowering.add(primitive)



def sdy_sharding_rule_attribute(rule: Any, operand_types: list, result_types: list) -> Any:
    """The ``sdy.sharding_rule`` MLIR attribute of a ``SdyShardingRule`` for a custom call.

    ``custom_partitioning`` builds this attribute itself; a plain FFI custom call
    (our batch-partitionable lowering) needs it built by hand so that Shardy
    propagates the token-dim shardings through the call, and JAX has no public
    function for that.
    """
    return _sharding_rule.sdy_sharding_rule_to_mlir(rule, operand_types, result_types)
