"""The PullImage step of a GpuReplicaSet (docs/fleet.md, "Image pulls"): pull the
image with the namespace's imagePullSecrets, report its progress, back off after a
refusal as the kubelet does, and keep a node's images apart between tenants.

Tenants (as Kubernetes' "ensure secret pulled images"): every pull is recorded, by
image ID, under a hash of the identity of the Secret whose credentials made it
(namespace, name, UID; never its contents), or as anonymous. An image present on the
node that a pull with credentials brought is run for a resource only when one of its
namespace's own Secrets pulled it, or proves now that it can (its registry is asked
for the image's manifest with them; nothing is downloaded). An image no pull of the
agent brought (loaded, built or committed on the node) or one pulled without
credentials is anyone's. The credentials go to Docker only: never into a status, an
event, a log line or a metric.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpudock.adapters.kube_api import ObjectNotFoundError
from gpudock.agent.replica_set_outcome import Event
from gpudock.api.gpu_replica_set import ImagePullProgress
from gpudock.api.reasons import Reason
from gpudock.core import image_pulls
from gpudock.core.observed import ResourceKey
from gpudock.core.ports import ContainerRuntime, KubeClient
from gpudock.core.replica_set import actions as act
from gpudock.errors import ImagePullError, UserError

RECORDS_FILE = "image-pulls.json"
# After ErrImagePull the resource is looked at again this soon, to show the backoff
# (ImagePullBackOff) it waits out, as a pod's status does.
SHOW_BACKOFF_AFTER = 1.0
Report = Callable[[ImagePullProgress], None]
Credentials = list[tuple[str, Mapping[str, str] | None]]  # (record key, auth config)


@dataclass(frozen=True)
class _Backoff:
    failures: int
    delay: float
    retry_at: float  # monotonic
    message: str


class ImagePulls:
    def __init__(self, docker: ContainerRuntime, kube: KubeClient, state_dir: Path,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._docker = docker
        self._kube = kube
        self._records_path = state_dir / RECORDS_FILE
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._known: dict[str, list[str]] | None = None  # the records, once read
        self._backoffs: dict[tuple[ResourceKey, str, tuple[str, ...]], _Backoff] = {}

    # ------------------------------------------------------------------------ the step
    def ensure(self, key: ResourceKey, action: act.PullImage,
               report: Report | None = None) -> list[Event]:
        """Pull ``action.image`` (``action.pull``) or check this namespace may run it
        as it is; ImagePullError (ErrImagePull with the registry's words, or
        ImagePullBackOff while a backoff lasts) when not."""
        which = (key, action.image, action.secrets)
        backoff = self._backoffs.get(which)
        now = self._monotonic()
        if backoff is not None and now < backoff.retry_at:
            raise ImagePullError(Reason.IMAGE_PULL_BACK_OFF, (
                f"Back-off {backoff.delay:.0f}s pulling image {action.image}: "
                f"{backoff.message}"), retry_after=backoff.retry_at - now)
        try:
            events = (self._pull(key.namespace, action, report) if action.pull
                      else self._check_access(key.namespace, action))
        except UserError as exc:
            if exc.reason != Reason.ERR_IMAGE_PULL:
                raise
            failures = backoff.failures + 1 if backoff is not None else 1
            delay = image_pulls.backoff_delay(failures)
            self._backoffs[which] = _Backoff(failures, delay, self._monotonic() + delay,
                                             exc.message)
            raise ImagePullError(Reason.ERR_IMAGE_PULL, exc.message,
                                 retry_after=SHOW_BACKOFF_AFTER) from exc
        self._backoffs.pop(which, None)
        return events

    def forget(self, key: ResourceKey) -> None:
        """The resource is gone: its backoffs go too."""
        for which in [w for w in self._backoffs if w[0] == key]:
            self._backoffs.pop(which, None)

    def _pull(self, namespace: str, action: act.PullImage,
              report: Report | None) -> list[Event]:
        credentials, problems = self._credentials(namespace, action)
        started = self._monotonic()
        refusal: UserError | None = None
        for record_key, auth in credentials or [(image_pulls.ANONYMOUS, None)]:
            progress = _Progress(action.image, report, self._monotonic)
            try:
                image_id = self._docker.pull_image(action.image, auth, progress)
            except UserError as exc:
                if exc.reason != Reason.ERR_IMAGE_PULL:
                    raise
                refusal = exc
                continue
            finally:
                progress.close()
            self._record(image_id, record_key)
            return [Event("Normal", Reason.PULLED, (
                f"Successfully pulled image {action.image} ({_short(image_id)}) in "
                f"{self._monotonic() - started:.3f}s"))]
        assert refusal is not None
        raise UserError(Reason.ERR_IMAGE_PULL, refusal.message + _noted(problems))

    def _check_access(self, namespace: str, action: act.PullImage) -> list[Event]:
        info = self._docker.image_info(action.image)
        if info is None:
            return []  # gone meanwhile: the create says ImageNotPresent
        pulled_by = self._records().get(info.id, ())
        if not pulled_by or image_pulls.ANONYMOUS in pulled_by:
            return []  # not pulled by the agent, or pulled without credentials
        credentials, problems = self._credentials(namespace, action)
        if any(record_key in pulled_by for record_key, _ in credentials):
            return []
        refusal: UserError | None = None
        for record_key, auth in credentials or [(image_pulls.ANONYMOUS, None)]:
            try:
                self._docker.check_pull_access(action.image, auth)
            except UserError as exc:
                if exc.reason != Reason.ERR_IMAGE_PULL:
                    raise
                refusal = exc
                continue
            self._record(info.id, record_key)
            return [Event("Normal", Reason.PULLED, (
                f"image {action.image} ({_short(info.id)}) was pulled on this node with "
                "another namespace's credentials; this namespace's own can pull it "
                "(asked of its registry)"))]
        assert refusal is not None
        raise UserError(Reason.ERR_IMAGE_PULL, (
            f"image {action.image} is on the node, pulled with another namespace's "
            "credentials; this namespace's own imagePullSecrets must be able to pull it, "
            f"and the registry refused them: {refusal.message}{_noted(problems)}"))

    # -------------------------------------------------------------------- credentials
    def _credentials(self, namespace: str,
                     action: act.PullImage) -> tuple[Credentials, list[str]]:
        """The auth configs of the namespace's imagePullSecrets for the image's
        registry, each with its record key; and what was wrong with the others."""
        registry = image_pulls.registry_of(action.image)
        found: Credentials = []
        problems: list[str] = []
        for name in action.secrets:
            try:
                secret = self._kube.get_secret(namespace, name)
            except ObjectNotFoundError:
                problems.append(f"Secret {name} not found")
                continue
            if secret.get("type") != image_pulls.SECRET_TYPE:
                problems.append(f"Secret {name} is not of type {image_pulls.SECRET_TYPE}")
                continue
            auth = image_pulls.credentials_for(secret.get("data") or {}, registry)
            if auth is None:
                problems.append(f"Secret {name} has no credentials for {registry}")
                continue
            found.append((image_pulls.credential_key(namespace, name,
                                                     str(secret.get("uid", ""))), auth))
        return found, problems

    # ------------------------------------------------------------------------ records
    def pulled_privately(self, image_id: str) -> bool:
        """Whether pulls with credentials brought this image ID, and none without."""
        keys = self._records().get(image_id, ())
        return bool(keys) and image_pulls.ANONYMOUS not in keys

    def _records(self) -> dict[str, list[str]]:
        """Image ID -> the record keys of the pulls that brought it (read from the
        state directory once, then kept)."""
        with self._lock:
            if self._known is None:
                try:
                    raw: Any = json.loads(self._records_path.read_text())
                except (OSError, ValueError):
                    raw = {}
                self._known = {str(k): [str(x) for x in v] for k, v in raw.items()
                               if isinstance(v, list)} if isinstance(raw, dict) else {}
            return self._known

    def _record(self, image_id: str, record_key: str) -> None:
        records = dict(self._records())
        with self._lock:
            records[image_id] = sorted(set(records.get(image_id, ())) | {record_key})
            self._records_path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self._records_path.with_suffix(".tmp")
            temporary.write_text(json.dumps(records, sort_keys=True))
            os.replace(temporary, self._records_path)
            self._known = records


class _Progress:
    """Docker's pull messages, tallied; ``report`` is told the progress once the
    first byte count is known, then at most every PROGRESS_EVERY seconds. The reports
    (status writes) run on a thread of their own, so the pull's stream is never held
    up by the API server (only the latest waiting one is written). ``close`` drops a
    report not yet begun (the status that follows the pull supersedes it) and waits
    for one being written, so none lands after that status."""

    def __init__(self, image: str, report: Report | None,
                 monotonic: Callable[[], float]) -> None:
        self._tally = image_pulls.PullTally(image)
        self._report = report
        self._monotonic = monotonic
        self._last: float | None = None
        self._pending: ImagePullProgress | None = None
        self._changed = threading.Condition()
        self._closed = False
        self._writer: threading.Thread | None = None

    def __call__(self, message: Mapping[str, Any]) -> None:
        self._tally.add(message)
        if self._report is None:
            return
        progress, now = self._tally.progress(), self._monotonic()
        due = (progress.bytes_total > 0 if self._last is None
               else now - self._last >= image_pulls.PROGRESS_EVERY)
        if not due:
            return
        self._last = now
        with self._changed:
            self._pending = progress
            self._changed.notify()
        if self._writer is None:
            self._writer = threading.Thread(target=self._write, name="pull-progress",
                                            daemon=True)
            self._writer.start()

    def _write(self) -> None:
        assert self._report is not None
        while True:
            with self._changed:
                while self._pending is None and not self._closed:
                    self._changed.wait()
                progress, self._pending = self._pending, None
            if progress is None:
                return  # closed, nothing left to write
            self._report(progress)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._pending = None
            self._changed.notify()
        if self._writer is not None:
            self._writer.join()


def _noted(problems: list[str]) -> str:
    return f" ({'; '.join(problems)})" if problems else ""


def _short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]
