"""Every reason gpudock writes: the ``reason`` of a condition, of a status (the REASON
column) and of a Kubernetes Event, on every kind.

Users read them (``kubectl get``, ``kubectl describe``, alerts on
``gpudock_reconcile_errors_total``), so they are part of the API: each member is
documented in docs/api.md (tests/unit/test_reasons.py checks it), and a value never
changes. A :class:`Reason` is a ``str`` (a StrEnum): it compares, hashes, formats and
serialises as its value, so a status or event written with one is byte for byte the
one written with the string.

Code that writes a reason takes a ``Reason`` (``UserError``, ``condition()``, the
reconciler's ``Event``, the status builders), so mypy refuses a reason that is not
listed here. Reasons read back from the API server (a status written earlier) stay
plain strings.
"""

from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    # --- Transient: a dependency does not answer (Progressing=False, retried) --------
    RETRYING = "Retrying"
    DOCKER_UNAVAILABLE = "DockerUnavailable"
    API_SERVER_UNAVAILABLE = "ApiServerUnavailable"
    REVISION_STORE_UNAVAILABLE = "RevisionStoreUnavailable"
    VOLUME_BACKEND_FAILED = "VolumeBackendFailed"

    # --- GpuReplicaSet: the user's to fix (or the node's: the waiting ones) ----------
    INVALID_SPEC = "InvalidSpec"
    IMAGE_NOT_PRESENT = "ImageNotPresent"
    RESERVED_IMAGE = "ReservedImage"
    EXCEEDS_NODE_CAPACITY = "ExceedsNodeCapacity"
    INSUFFICIENT_GPUS = "InsufficientGPUs"  # waiting for the node
    IMAGE_CHANGED = "ImageChanged"  # a saved layer's image name points elsewhere now
    ADDRESSES_EXHAUSTED = "AddressesExhausted"  # waiting for the node
    VOLUME_NOT_READY = "VolumeNotReady"  # waiting for the node
    HOST_PATH_NOT_ALLOWED = "HostPathNotAllowed"
    HOST_PATH_MISSING = "HostPathMissing"
    HOST_PATH_CROSSES_MOUNT = "HostPathCrossesMount"
    HOST_PATH_READ_ONLY = "HostPathReadOnly"
    HOST_PATH_CHANGED = "HostPathChanged"
    HOST_PORT_NOT_ALLOWED = "HostPortNotAllowed"
    HOST_PORT_IN_USE = "HostPortInUse"
    NO_FREE_HOST_PORT = "NoFreeHostPort"
    NODE_NAME_CHANGED = "NodeNameChanged"
    REVISION_NOT_FOUND = "RevisionNotFound"
    ROLLBACK_TO_CURRENT = "RollbackToCurrent"
    REVISION_DISK_GONE = "RevisionDiskGone"
    CONTAINER_CREATE_FAILED = "ContainerCreateFailed"
    CONTAINER_START_FAILED = "ContainerStartFailed"
    COMMAND_NOT_FOUND = "CommandNotFound"
    DOCKER_REQUEST_FAILED = "DockerRequestFailed"
    DISK_FULL = "DiskFull"
    DISK_RESTORE_FAILED = "DiskRestoreFailed"
    DISK_SAVE_FAILED = "DiskSaveFailed"
    # spec.resources (docs/fleet.md, "Limits")
    LIMIT_BELOW_REQUEST = "LimitBelowRequest"
    BELOW_DOCKER_MINIMUM = "BelowDockerMinimum"

    # --- GpuReplicaSet: conditions of a serving, idle or settled instance ------------
    CONTAINER_RUNNING = "ContainerRunning"
    CONTAINER_NOT_RUNNING = "ContainerNotRunning"  # also an ExecRequest/ImageCommit failure
    CRASH_LOOP = "CrashLoop"
    PAUSED = "Paused"  # also the event of a container stopped for state Paused
    STOPPED = "Stopped"  # also the event of a container stopped
    RECONCILE_COMPLETE = "ReconcileComplete"
    AS_EXPECTED = "AsExpected"
    DRIFT_REPAIRED = "DriftRepaired"

    # --- GpuReplicaSet: the step under way (Progressing=True) ------------------------
    CLEANING = "Cleaning"
    ADOPTING = "Adopting"
    ROLLING_OUT = "RollingOut"
    ROLLING_BACK = "RollingBack"
    RECORDING = "Recording"  # also a SizedVolume step
    STOPPING = "Stopping"
    CREATING = "Creating"  # also a SizedVolume step
    RECONCILING = "Reconciling"

    # --- GpuReplicaSet: events of the steps done -------------------------------------
    DRIFT_DETECTED = "DriftDetected"
    HOST_PORT_SKIPPED = "HostPortSkipped"
    CREATED = "Created"
    RECREATED = "Recreated"
    RESUMED = "Resumed"
    RESTARTED = "Restarted"
    STARTED = "Started"
    REMOVED = "Removed"
    REMOVED_STALE = "RemovedStale"
    RENAMED = "Renamed"
    UNPAUSED = "Unpaused"
    RESTART_POLICY_RESTORED = "RestartPolicyRestored"
    LIMITS_UPDATED = "LimitsUpdated"  # cpu, memory, pids changed in place
    REVISION_STARTED = "RevisionStarted"
    REVISION_RECORDED = "RevisionRecorded"  # also a SizedVolume event
    REVISION_ADOPTED = "RevisionAdopted"
    REVISION_PRUNED = "RevisionPruned"
    PREVIOUS_REVISION_REMOVED = "PreviousRevisionRemoved"
    PREVIOUS_REVISION_RESTORED = "PreviousRevisionRestored"
    ROLLED_BACK = "RolledBack"
    DISK_SAVED = "DiskSaved"
    DISK_FLATTENED = "DiskFlattened"
    HISTORY_RETAINED_APART = "HistoryRetainedApart"
    HISTORY_ADOPTED = "HistoryAdopted"
    HISTORY_PURGED = "HistoryPurged"

    # --- GpuNode, and a resource whose node has no live agent ------------------------
    AGENT_HEARTBEAT = "AgentHeartbeat"
    NODE_NOT_FOUND = "NodeNotFound"
    NODE_NOT_READY = "NodeNotReady"

    # --- Placement: the scheduler's binding (docs/fleet.md) ----------------------------
    SCHEDULED = "Scheduled"
    UNSCHEDULABLE = "Unschedulable"
    FAILED_SCHEDULING = "FailedScheduling"
    NODE_REJECTED = "NodeRejected"
    WAITING_FOR_FIRST_CONSUMER = "WaitingForFirstConsumer"

    # --- SizedVolume -----------------------------------------------------------------
    VOLUME_READY = "VolumeReady"
    NOT_READY = "NotReady"
    ATTACHING = "Attaching"
    GROWING = "Growing"
    SHRINKING = "Shrinking"
    COPYING = "Copying"
    REMOVING_EARLIER_VOLUME = "RemovingEarlierVolume"
    INSUFFICIENT_SPACE = "InsufficientSpace"
    VOLUME_TOO_LARGE = "VolumeTooLarge"
    VOLUME_LOST = "VolumeLost"
    VOLUME_FILESYSTEM_FAILED = "VolumeFilesystemFailed"
    RESIZE_UNDO_FAILED = "ResizeUndoFailed"
    UNDO_FILE_DROPPED = "UndoFileDropped"
    SHRINK_BELOW_USAGE = "ShrinkBelowUsage"
    VOLUME_NOT_RESIZABLE = "VolumeNotResizable"
    VOLUME_ROOT_UNUSABLE = "VolumeRootUnusable"
    UNKNOWN_VOLUME_BACKEND = "UnknownVolumeBackend"
    VOLUME_NOT_MOVABLE = "VolumeNotMovable"
    VOLUME_IN_USE = "VolumeInUse"
    VOLUME_CREATED = "VolumeCreated"
    VOLUME_ATTACHED = "VolumeAttached"
    DOCKER_VOLUME_CREATED = "DockerVolumeCreated"
    VOLUME_RESIZED = "VolumeResized"
    VOLUME_MOVED = "VolumeMoved"
    EARLIER_VOLUME_REMOVED = "EarlierVolumeRemoved"
    # On the GpuReplicaSet whose container a volume's resize stopped and started (#26).
    RESTARTED_FOR_VOLUME_RESIZE = "RestartedForVolumeResize"

    # --- ExecRequest and ImageCommit -------------------------------------------------
    RUNNING = "Running"
    COMPLETED = "Completed"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    COMMITTING = "Committing"
    COMMITTED = "Committed"
    SUCCEEDED = "Succeeded"  # the event of an ImageCommit done (its phase)
    IMAGE_TAG_TAKEN = "ImageTagTaken"
    IMAGE_NAME_NOT_ALLOWED = "ImageNameNotAllowed"
    REPLICA_SET_NOT_FOUND = "ReplicaSetNotFound"
    REPLICA_SET_NOT_RUNNING = "ReplicaSetNotRunning"
    AGENT_RESTARTED = "AgentRestarted"
    EXEC_LIMIT_REACHED = "ExecLimitReached"  # Pending: the namespace's slots are taken
    REQUEST_LIMIT_REACHED = "RequestLimitReached"  # Pending: the node's slots are taken

    # --- GpuReplicaSet: image pulls (#22 item 9, 10) ---------------------------------
    ERR_IMAGE_PULL = "ErrImagePull"  # the registry refused (its words); retried
    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"  # waiting out the backoff before a retry
    PULLING = "Pulling"  # the step under way; also the event of a pull begun
    PULLED = "Pulled"  # the event of a pull done
    # --- GPU health (#24: docs/gpu-health.md) ----------------------------------------
    GPU_UNHEALTHY = "GPUUnhealthy"  # Degraded of a holder; the GpuNode's event
    GPU_READMITTED = "GPUReadmitted"  # the GpuNode's event: back in service
    GPU_FAULT_IGNORED = "GPUFaultIgnored"  # the GpuNode's event: an XID of the ignored class
    GPU_ACCESS_LOST = "GPUAccessLost"  # GRS event: its container lost its GPUs; recreated
    IDLE_STOPPED = "IdleStopped"  # GRS event: spec.idleStopSeconds idle, set Stopped
    # --- GpuMigration (#23, docs/migration.md) ---------------------------------------
    MIGRATING = "Migrating"  # the instance is moving to another node
    MIGRATED = "Migrated"  # it runs on the target; the source kept nothing
    MIGRATION_FAILED = "MigrationFailed"  # failed before Switching: the source runs on
    MIGRATION_CANCELLED = "MigrationCancelled"  # deleted before Switching
    MIGRATION_IN_PROGRESS = "MigrationInProgress"  # another migration moves the instance
    TARGET_UNSCHEDULABLE = "TargetUnschedulable"  # no node can take it
    TRANSFER_FAILED = "TransferFailed"  # the copy broke or did not match the manifest
    TRANSFER_STALLED = "TransferStalled"  # no byte from the peer for 150 s
    TARGET_FAILED = "TargetFailed"  # the target could not run it: back on the source
    NOT_MIGRATABLE = "NotMigratable"  # pinned, never ran here, a SizedVolume, ...
