"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection
does it: a candidate takes the Lease when its holder has not renewed it for a whole
lease duration (timed by this candidate's own clock, from when it last saw the record
change, so clocks need not agree), and the leader renews it every retry period and
stops leading when it could not renew for the renew deadline.

Only one scheduler leads at a time while the API server answers; correctness never
depends on it: every binding is a compare-and-set (scheduler/binder.py).
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from gpudock.adapters.kube_api import KubeUnavailableError, ObjectNotFoundError
from gpudock.adapters.kube_leases import LeaseRecord, Leases

logger = logging.getLogger(__name__)

LEASE_NAME = "gpudock-scheduler"
LEASE_SECONDS = 15   # kube-scheduler's defaults
RENEW_DEADLINE_SECONDS = 10
RETRY_SECONDS = 2


@dataclass
class _Seen:
    record: LeaseRecord | None
    at: float  # monotonic time it was first seen so


class LeaderElector:
    def __init__(self, leases: Leases, namespace: str, identity: str,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._leases = leases
        self._namespace = namespace
        self.identity = identity
        self._monotonic = monotonic
        self._seen: _Seen | None = None
        self._renewed_at: float | None = None  # last successful write while leading

    @property
    def leading(self) -> bool:
        return self._renewed_at is not None and \
            self._monotonic() - self._renewed_at < RENEW_DEADLINE_SECONDS

    def step(self) -> bool:
        """One try (every RETRY_SECONDS): take or renew the Lease; True while this
        candidate leads."""
        was_leading = self.leading
        try:
            record = self._leases.read(self._namespace, LEASE_NAME)
            now = self._monotonic()
            if self._seen is None or self._seen.record != record:
                self._seen = _Seen(record, now)
            mine = record is not None and record.holder == self.identity
            expired = record is None or not record.holder or \
                now - self._seen.at >= record.duration_seconds
            if not mine and not expired:
                self._renewed_at = None  # another candidate holds it now
            elif mine or expired:
                self._leases.write(self._namespace, LEASE_NAME, self.identity,
                                   LEASE_SECONDS, datetime.datetime.now(datetime.UTC),
                                   record)
                self._renewed_at = now
        except (KubeUnavailableError, ObjectNotFoundError) as exc:  # a conflict too; or
            # the namespace is not there (yet): tried again next period
            logger.debug("lease %s: %s", LEASE_NAME, exc)
        leading = self.leading
        if leading != was_leading:
            logger.info("scheduler %s %s the lease %s/%s", self.identity,
                        "now leads: took" if leading else "stopped leading: lost",
                        self._namespace, LEASE_NAME)
        if not leading:
            self._renewed_at = None
        return leading
