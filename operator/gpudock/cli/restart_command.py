"""``kubectl gpudock restart NAME``: a new revision of the same spec (#25 item 4).

It sets the annotation gpudock.dev/redeploy to a fresh value (the time, to the
microsecond), as ``kubectl rollout restart`` does for a Deployment; the agent rolls a
new revision out with the disk carried, GPUs and ports kept (docs/revisions.md,
"Redeploy"). ``--wait SECONDS`` waits until the new revision is in place (or failed).
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from gpudock.adapters.kube_api import KubeApi
from gpudock.api.gpu_replica_set import PLURAL, REDEPLOY_ANNOTATION
from gpudock.core.replica_set.redeploy import fresh_token

POLL_SECONDS = 0.5


def restart(kube: KubeApi, namespace: str, name: str, wait: float, out: TextIO,
            err: TextIO = sys.stderr) -> int:
    before = int((kube.get(PLURAL, namespace, name).get("status") or {}).get("revision")
                 or 0)
    token = fresh_token()
    kube.patch(PLURAL, namespace, name,
               {"metadata": {"annotations": {REDEPLOY_ANNOTATION: token}}})
    print(f"gpureplicaset {namespace}/{name}: restart requested "
          f"({REDEPLOY_ANNOTATION}={token})", file=out)
    deadline = time.monotonic() + wait
    while wait > 0:
        done, message = _outcome(kube.get(PLURAL, namespace, name).get("status") or {},
                                 before)
        if done is not None:
            print(message, file=out if done else err)
            return 0 if done else 1
        if time.monotonic() > deadline:
            print(f"error: not done after {wait:.0f}s", file=err)
            return 1
        time.sleep(POLL_SECONDS)
    return 0


def _outcome(status: dict[str, Any], before: int) -> tuple[bool | None, str]:
    """(True, what) once a revision after ``before`` is in place, (False, why) when it
    failed, (None, "") while under way."""
    failed = next((h for h in status.get("history") or ()
                   if int(h.get("revision") or 0) > before and h.get("failed")), None)
    if failed is not None:
        return False, f"error: revision {failed['revision']} failed: {failed['failed']}"
    busy = any(c.get("type") == "Progressing" and c.get("status") == "True"
               for c in status.get("conditions") or ())
    revision = int(status.get("revision") or 0)
    if revision > before and not busy:
        return True, f"restarted: now revision {revision} (phase {status.get('phase')})"
    return None, ""
