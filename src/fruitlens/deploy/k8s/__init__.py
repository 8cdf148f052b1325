"""Deployment on Kubernetes: the Helm chart's values and the ``helm`` binary (:mod:`.chart`), the release
followed through the kubernetes client (:mod:`.client`), and ``fruitlens k8s`` (:mod:`.cli`).
One release = one pipeline job: a Job whose pod is the Spark driver (client mode), executor pods created
by the driver. The pipeline's stage modules never import this package (tests/unit/test_architecture.py).
"""
from fruitlens.deploy.k8s.chart import (
    PIPELINE_VALUES,
    Helm,
    chart_values,
    default_chart,
    find_helm,
    find_kubectl,
    split_image,
)
from fruitlens.deploy.k8s.client import (
    JobClient,
    JobStatus,
    PodState,
    api_client,
    error_line,
    pod_state,
)
from fruitlens.deploy.k8s.errors import ApiError, JobFailed, K8sError

__all__ = ["PIPELINE_VALUES", "ApiError", "Helm", "JobClient", "JobFailed", "JobStatus", "K8sError", "PodState",
           "api_client", "chart_values", "default_chart", "error_line", "find_helm", "find_kubectl", "pod_state",
           "split_image"]
