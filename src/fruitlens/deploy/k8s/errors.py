"""The errors of ``fruitlens k8s``: one line each, with what to do."""
from __future__ import annotations

from fruitlens.errors import FruitlensError


class K8sError(FruitlensError):
    """Talking to the cluster or to helm failed, or the release is not there."""


class ApiError(K8sError):
    """The API server answered with an error status (``status``: 403, 404, ...)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class JobFailed(K8sError):
    """The pipeline job ended in failure; ``exit_code`` is the driver's own when it has one."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code if exit_code > 0 else 1
