"""The cluster scheduler: binds GpuReplicaSets and SizedVolumes that name no node
(docs/fleet.md). It runs in every agent (``--scheduler auto``; one leads, by a Lease)
or alone (``gpudock scheduler``), uses core, api and adapters, and never the agent."""
