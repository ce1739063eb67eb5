"""Device mesh, batch sharding and multi-host set-up for data-parallel training.

One mesh axis, ``"data"``: the batch is split along its leading axis over the devices of that axis,
everything else (parameters, optimizer state, RNG key) is replicated on every device.

Multi-host launch (e.g. N hosts with 8 accelerators each): start the *same* script on every host
``i = 0 .. N-1`` with the same coordinator (host 0's address and a free port)::

    python train.py --coordinator 10.0.0.1:1234 --num-processes N --process-id i

and call, before any other JAX call,
``initialize_distributed(args.coordinator, args.num_processes, args.process_id)``
(on SLURM / Cloud TPU / Open MPI all arguments may be omitted: JAX detects the cluster). After that,
``jax.devices()`` lists the devices of all hosts, :func:`make_mesh` spans them, and each host's batch
function returns only its *local* part of the global batch (global batch / number of hosts rows);
:func:`shard_batch` assembles the global array with ``jax.make_array_from_process_local_data``.
Every host must call the training loop in lockstep (same steps, same checkpoint directory on a
shared file system); only process 0 writes metrics and shows the progress bar.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None, **kwargs: Any) -> None:
    """Connect this process to a multi-host JAX job (thin wrapper of ``jax.distributed.initialize``).

    Call once per process, before any other JAX call; arguments left ``None`` are auto-detected on
    SLURM, Open MPI and Cloud TPU. Extra keyword arguments go to ``jax.distributed.initialize``.
    """
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id, **kwargs)


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``devices`` (default: all devices of all processes).

    Returns a ``Mesh`` with ``mesh.shape == {"data": len(devices)}``.
    """
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding that keeps a full copy of an array on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The sharding that splits an array's leading (batch) axis over the ``"data"`` mesh axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def is_typed_key(x: Any) -> bool:
    """True for a typed PRNG key array (``jax.random.key``), whose data must be moved as ``key_data``."""
    return jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Copy every leaf of ``tree`` (the same value on every host) to every device of ``mesh``.

    Leaves go through host memory, so the result never aliases the input (it may be donated) and
    works for multi-host meshes; typed PRNG keys are copied as their key data.
    """
    sharding = replicated(mesh)

    def put(x):
        if is_typed_key(x):
            return jax.random.wrap_key_data(put(jax.random.key_data(x)),
                                            impl=jax.random.key_impl(x))
        return jax.device_put(np.array(x), sharding)

    return jax.tree.map(put, tree)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Turn a host batch into global arrays sharded over the ``"data"`` axis of ``mesh``.

    Args:
      batch: pytree of arrays, each of shape ``[b, ...]`` with the same ``b``: the rows fed by this
        process (the whole batch on a single host, this host's part on several hosts).
      mesh: mesh from :func:`make_mesh`.

    Returns:
      The same pytree of ``jax.Array`` of shape ``[b * num_processes, ...]`` whose leading axis is
      split over the mesh's data-parallel devices.

    Raises:
      ValueError: naming the leaf and its shape, if a leaf has no leading axis or ``b`` is not a
        multiple of this process's number of devices in the mesh.
    """
    sharding = batch_sharding(mesh)
    n_local = len(mesh.local_devices)

    def check(path, leaf):
        leaf = np.asarray(leaf)
        if leaf.ndim == 0 or leaf.shape[0] % n_local:
            raise ValueError(
                f"batch leaf {jax.tree_util.keystr(path) or '<root>'} has shape {leaf.shape}: its "
                f"leading (batch) axis must be divisible by the {n_local} data-parallel devices")
        return leaf

    batch = jax.tree_util.tree_map_with_path(check, batch)
    if jax.process_count() == 1:  # one transfer of the whole tree (half the time of one call per leaf)
        return jax.device_put(batch, sharding)
    return jax.tree.map(lambda leaf: jax.make_array_from_process_local_data(sharding, leaf), batch)
