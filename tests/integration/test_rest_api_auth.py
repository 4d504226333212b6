"""#25 item 5: `gpudock api --auth kubernetes`: ServiceAccount tokens issued for the
API's audience (TokenRequest), checked by TokenReview; each action checked by a
SubjectAccessReview against the caller's own RBAC (gpudock-view, gpudock-edit)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.conftest import AgentFactory
from tests.integration.test_rest_api import ok, run_body
from tests.stack.api_process import ApiProcess, api_service_kubeconfig, service_account_token
from tests.stack.localstack import LocalStack, wait_for
from tests.stack.resources import grs


@pytest.fixture
def api(stack: LocalStack, namespace: str) -> Iterator[ApiProcess]:
    stack.kubectl("get", "grs", "-n", namespace, check=False)  # see test_rest_api.api
    process = ApiProcess(stack, "default", auth="kubernetes",
                         kubeconfig=api_service_kubeconfig(stack, namespace)).start()
    yield process
    process.stop()
    stack.kubectl("delete", "clusterrolebinding", f"gpudock-api-{namespace}", check=False)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_25_5_service_account_tokens_with_view_and_edit_roles(
        stack: LocalStack, namespace: str, start_agent: AgentFactory, api: ApiProcess) -> None:
    start_agent()
    for account, role in (("viewer", "gpudock-view"), ("editor", "gpudock-edit")):
        stack.kubectl("create", "serviceaccount", account, "-n", namespace)
        stack.kubectl("create", "rolebinding", account, "-n", namespace,
                      f"--clusterrole={role}", f"--serviceaccount={namespace}:{account}")
    viewer = bearer(service_account_token(stack, namespace, "viewer", audience="gpudock-api"))
    editor = bearer(service_account_token(stack, namespace, "editor", audience="gpudock-api"))
    elsewhere = bearer(service_account_token(stack, namespace, "editor", audience="other"))

    for headers in ({}, bearer("not-a-token"), elsewhere, {"Authorization": "Basic eDp5"}):
        answer = api.call("POST", "/replicaSet", run_body("foo"), headers=headers)
        assert answer.raw == b'{"code":401,"msg":"Unauthorized","data":null}'
    assert api.call("GET", "/replicaSet/foo", headers=elsewhere).code == 401

    # The viewer may read, not change; the refusal comes before the body is read.
    assert api.call("GET", "/replicaSet/foo", headers=viewer).code == 1016
    answer = api.call("POST", "/replicaSet", raw=b"not json", headers=viewer)
    assert (answer.code, answer.body["msg"], answer.reason) == (403, "Forbidden", "Forbidden")
    assert api.call("POST", "/replicaSet/foo/execute", {"cmd": ["id"]},
                    headers=viewer).code == 403

    # The editor acts in its own namespace (not the service's --namespace, default).
    assert ok(api.call("POST", "/replicaSet", run_body("foo", gpuCount=0),
                       headers=editor)) == {"name": "foo-1"}
    made = grs(stack, namespace, "foo")
    assert made["metadata"]["annotations"]["gpudock.dev/rest-caller"] == \
        f"system:serviceaccount:{namespace}:editor"
    assert ok(api.call("GET", "/replicaSet/foo", headers=viewer))["Info"]["version"] == 1
    assert api.call("PATCH", "/replicaSet/foo/stop", headers=viewer).code == 403
    # GpuNodes are cluster-scoped: a RoleBinding in a namespace does not reach them,
    # through kubectl as through the API (docs/rest-api.md: bind gpudock-view cluster-wide).
    assert api.call("GET", "/resources/gpus", headers=viewer).code == 403
    stack.kubectl("create", "clusterrolebinding", f"{namespace}-viewer",
                  "--clusterrole=gpudock-view", f"--serviceaccount={namespace}:viewer")
    try:
        # The API server's RBAC cache takes the new binding in a moment.
        wait_for(lambda: api.call("GET", "/resources/gpus", headers=viewer).code == 200, 30,
                 what="the cluster-wide binding")
        assert ok(api.call("GET", "/resources/gpus", headers=viewer))["gpus"]
    finally:
        stack.kubectl("delete", "clusterrolebinding", f"{namespace}-viewer")
    assert ok(api.call("DELETE", "/replicaSet/foo", headers=editor)) is None
