"""Limits changed on the container as it runs (docs/fleet.md, "Limits"): CPU, memory
and pids through Docker's update, the same container and revision; the revision's
record notes the spec they came from. What Docker cannot do in place (lift a CPU or
memory limit it holds) is a new revision with the disk kept, as /dev/shm always is.
"""

from __future__ import annotations

from dataclasses import replace

from gpudock.api.gpu_replica_set import GpuReplicaSetSpec
from gpudock.core.limits import check_on_node, in_place_fields
from gpudock.core.observed import ObservedContainer
from gpudock.core.replica_set import actions as act
from gpudock.core.replica_set.observation import Observation
from gpudock.core.revision import Revision


def resize(obs: Observation, current: ObservedContainer, record: Revision,
           spec: GpuReplicaSetSpec) -> act.UpdateLimits | str | None:
    """For a container whose revision already is ``spec``'s: the in-place update it
    needs, None when it has its limits and its record notes them, or why a new
    revision is needed instead (text). Raises UserError when the node refuses the
    limits (nothing is changed)."""
    wanted = check_on_node(spec, obs.limit_defaults, obs.node_capacity)
    shape = spec.shape()
    note = None if in_place_fields(record.spec) == in_place_fields(shape) else \
        replace(record, spec=shape)
    have = current.limits
    if wanted.in_place() == have.in_place():
        return None if note is None else act.UpdateLimits(current.id, current.name,
                                                          wanted, note)
    lifted = [what for what, want, held in (("cpu", wanted.nano_cpus, have.nano_cpus),
                                            ("memory", wanted.memory, have.memory))
              if held and not want]
    if lifted:
        return (f"the {' and '.join(lifted)} limit of {current.name} was lifted (Docker "
                "cannot lift it in place)")
    return act.UpdateLimits(current.id, current.name, wanted, note)
