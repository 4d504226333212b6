"""The Go service's answer codes, their fixed messages, and the envelope every
/api/v1 answer is wrapped in (HTTP 200, exactly ``code``, ``msg``, ``data``)."""

from __future__ import annotations

import enum
from typing import Any

from gpudock.api.reasons import Reason
from gpudock.errors import UserError


class Code(enum.IntEnum):
    SUCCESS = 200
    UNAUTHORIZED = 401
    FORBIDDEN = 403
    SERVE_BUSY = 500
    INVALID_PARAMS = 1000
    IMAGE_NAME_EMPTY = 1001
    CONTAINER_NAME_EMPTY = 1002
    CONTAINER_NAME_DASH = 1003
    CONTAINER_RUN_FAILED = 1004
    CONTAINER_DELETE_FAILED = 1005
    CONTAINER_EXECUTE_FAILED = 1006
    CONTAINER_PATCH_FAILED = 1007
    CONTAINER_EXISTS = 1008
    CONTAINER_NO_NEED_PATCH = 1009
    CONTAINER_STOP_FAILED = 1010
    CONTAINER_RESTART_FAILED = 1011
    GPU_COUNT_NEGATIVE = 1012
    GPU_NOT_ENOUGH = 1013
    PORT_NOT_ENOUGH = 1014
    COMMIT_FAILED = 1015
    CONTAINER_INFO_FAILED = 1016
    CONTAINER_HISTORY_FAILED = 1017
    CONTAINER_SHUT_DOWN_FAILED = 1018
    CONTAINER_START_UP_FAILED = 1019
    VERSION_NEGATIVE = 1020
    ROLLBACK_FAILED = 1021
    NO_NEED_ROLLBACK = 1022
    VOLUME_CREATE_FAILED = 1023
    VOLUME_NAME_EMPTY = 1024
    VOLUME_DELETE_FAILED = 1025
    VOLUME_EXISTS = 1026
    VOLUME_NAME_NEEDS_VERSION = 1027
    VOLUME_SAME_SIZE = 1028
    VOLUME_UNIT_NOT_SUPPORTED = 1029
    VOLUME_USED_GREATER = 1030
    VOLUME_NAME_DASH = 1031
    VOLUME_NAME_SLASH = 1032
    VOLUME_INFO_FAILED = 1033
    VOLUME_HISTORY_FAILED = 1034
    VOLUME_PATCH_FAILED = 1035


MESSAGES: dict[Code, str] = {
    Code.SUCCESS: "Success",
    Code.UNAUTHORIZED: "Unauthorized",
    Code.FORBIDDEN: "Forbidden",
    Code.SERVE_BUSY: "Server busy",
    Code.INVALID_PARAMS: "Failed to parse body",
    Code.IMAGE_NAME_EMPTY: "Image name cannot be empty",
    Code.CONTAINER_NAME_EMPTY: "Container name cannot be empty",
    Code.CONTAINER_NAME_DASH: "Container name cannot contain dash",
    Code.CONTAINER_RUN_FAILED: "Failed to start container",
    Code.CONTAINER_DELETE_FAILED: "Failed to delete container",
    Code.CONTAINER_EXECUTE_FAILED: "Failed to execute a command",
    Code.CONTAINER_PATCH_FAILED: "Failed to patch container",
    Code.CONTAINER_EXISTS: "Container already exists",
    Code.CONTAINER_NO_NEED_PATCH: "Container doesn't need patch",
    Code.CONTAINER_STOP_FAILED: "Failed to stop container",
    Code.CONTAINER_RESTART_FAILED: "Failed to restart container",
    Code.GPU_COUNT_NEGATIVE: "GPU count must be greater than or equal to 0",
    Code.GPU_NOT_ENOUGH: "Not enough GPU resources",
    Code.PORT_NOT_ENOUGH: "Not enough port resources",
    Code.COMMIT_FAILED: "Failed to commit image",
    Code.CONTAINER_INFO_FAILED: "Failed to get container info, container not found",
    Code.CONTAINER_HISTORY_FAILED: "Failed to get container history, container not found",
    Code.CONTAINER_SHUT_DOWN_FAILED: "Failed to shut down container",
    Code.CONTAINER_START_UP_FAILED: "Failed to start up container",
    Code.VERSION_NEGATIVE: "Container version must be greater than or equal to 0",
    Code.ROLLBACK_FAILED: "Failed to rollback container",
    Code.NO_NEED_ROLLBACK: "Container doesn't need rollback, the current version is the "
                           "same as the requested version",
    Code.VOLUME_CREATE_FAILED: "Failed to create volume",
    Code.VOLUME_NAME_EMPTY: "Volume name cannot be empty",
    Code.VOLUME_DELETE_FAILED: "Failed to delete volume",
    Code.VOLUME_EXISTS: "Volume already exists",
    Code.VOLUME_NAME_NEEDS_VERSION: "Volume name must contain the version number",
    Code.VOLUME_SAME_SIZE: "Volume doesn't need patch, as it is the same size before and "
                           "after the update",
    Code.VOLUME_UNIT_NOT_SUPPORTED: "Volume size units are not supported, supported units: "
                                    "KB, MB, GB, TB",
    Code.VOLUME_USED_GREATER: "Failed to patch volume size, the patch size is smaller than "
                              "the used size",
    Code.VOLUME_NAME_DASH: "Volume name cannot contain dash",
    Code.VOLUME_NAME_SLASH: "Volume name must not begin with /",
    Code.VOLUME_INFO_FAILED: "Failed to get volume info",
    Code.VOLUME_HISTORY_FAILED: "Failed to get volume history",
    Code.VOLUME_PATCH_FAILED: "Failed to patch volume",
}

REASON_HEADER = "X-Gpudock-Reason"


class RefusalError(UserError):
    """A request answered with an error code. ``why`` is gpudock's own word for it (a
    condition reason, or one of the API's own: Invalid, NotFound, Timeout ...), sent
    in the X-Gpudock-Reason header; ``detail`` goes to the log only."""

    def __init__(self, code: Code, why: str, detail: str = "") -> None:
        super().__init__(Reason.INVALID_SPEC, f"{int(code)} {why}: {detail}")
        self.code, self.why, self.detail = code, why, detail


def envelope(code: Code, data: Any = None) -> dict[str, Any]:
    return {"code": int(code), "msg": MESSAGES[code], "data": data}
