"""The GpuReplicaSet decision, by job: plan (the flow), observation (what a pass reads
and returns), admission (whether a container can be made on the node), saved_disks
(where disks are saved and what is saved), history (revision records), actions (the
steps a plan asks for) and status (what a plan reports)."""
