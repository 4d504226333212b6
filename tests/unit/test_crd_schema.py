"""crds/ and the Python models share one grammar for sizes, paths and names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gpudock.api.container_fields import (
    ENV_NAME_PATTERN,
    HOSTNAME_PATTERN,
    IP_PATTERN,
    MAX_COMMAND_ITEMS,
    MAX_ENV_ITEMS,
    MAX_HOST_ALIASES,
    MAX_VALUE_LENGTH,
)
from gpudock.api.gpu_replica_set import MAX_GPU_COUNT
from gpudock.api.parsing import DNS_SUBDOMAIN_PATTERN
from gpudock.api.paths import ABSOLUTE_PATH_PATTERN
from gpudock.api.quantity import SIZE_PATTERN

CRDS = Path(__file__).resolve().parents[2] / "crds"


def _schema(plural: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / f"gpudock.dev_{plural}.yaml").read_text())
    assert crd["spec"]["group"] == "gpudock.dev"
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1"
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


def test_gpu_replica_set_schema_matches_the_models() -> None:
    spec = _schema("gpureplicasets")["properties"]
    assert spec["nodeName"]["pattern"] == DNS_SUBDOMAIN_PATTERN
    assert spec["gpuCount"]["maximum"] == MAX_GPU_COUNT
    assert spec["env"]["items"]["properties"]["name"]["pattern"] == ENV_NAME_PATTERN
    mount = spec["mounts"]["items"]["properties"]
    assert mount["hostPath"]["pattern"] == ABSOLUTE_PATH_PATTERN
    assert mount["mountPath"]["pattern"] == ABSOLUTE_PATH_PATTERN
    assert spec["state"]["enum"] == ["Running", "Paused", "Stopped"]


def test_gpu_replica_set_schema_bounds_match_the_models() -> None:
    """#14.9: the sizes the schema admits are the ones the parser and Docker accept."""
    spec = _schema("gpureplicasets")["properties"]
    assert spec["env"]["maxItems"] == MAX_ENV_ITEMS
    assert spec["env"]["items"]["properties"]["value"]["maxLength"] == MAX_VALUE_LENGTH
    assert spec["command"]["maxItems"] == MAX_COMMAND_ITEMS
    assert spec["command"]["items"]["maxLength"] == MAX_VALUE_LENGTH
    aliases = spec["hostAliases"]
    assert aliases["maxItems"] == MAX_HOST_ALIASES
    assert aliases["items"]["properties"]["ip"]["pattern"] == IP_PATTERN
    assert aliases["items"]["properties"]["hostnames"]["items"]["pattern"] == HOSTNAME_PATTERN
    dns = spec["dnsConfig"]["properties"]
    assert dns["nameservers"]["items"]["pattern"] == IP_PATTERN
    assert dns["searches"]["items"]["pattern"] == HOSTNAME_PATTERN


def test_sized_volume_schema_matches_the_models() -> None:
    spec = _schema("sizedvolumes")["properties"]
    assert spec["size"]["pattern"] == SIZE_PATTERN
    assert spec["nodeName"]["pattern"] == DNS_SUBDOMAIN_PATTERN


def test_request_kinds_match_their_models() -> None:
    from gpudock.api.exec_request import MAX_TIMEOUT_SECONDS
    from gpudock.api.image_commit import IMAGE_PATTERN

    commit = _schema("imagecommits")["properties"]
    assert commit["image"]["pattern"] == IMAGE_PATTERN
    run = _schema("execrequests")["properties"]
    assert run["timeoutSeconds"]["maximum"] == MAX_TIMEOUT_SECONDS
    assert run["command"]["maxItems"] == MAX_COMMAND_ITEMS
