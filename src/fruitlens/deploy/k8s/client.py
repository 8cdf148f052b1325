"""Following a release on the cluster with the kubernetes client: Job and pod statuses, the driver log,
leftover pods. Everything is found by the chart's labels (``app.kubernetes.io/instance=<release>`` and
``app.kubernetes.io/component=driver|executor``), so the chart's names are never re-computed here.
"""
from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from fruitlens.deploy.k8s.errors import ApiError, JobFailed, K8sError
from fruitlens.errors import require

INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
DRIVER_CONTAINER = "driver"
#: A driver container waiting for one of these will not start by itself: fail at once, with the reason.
FATAL_WAITING = {"InvalidImageName", "CreateContainerConfigError", "ErrImageNeverPull", "CreateContainerError"}
#: Waiting reasons that may clear up (a registry hiccup) but usually mean a wrong image: fail after a grace.
SLOW_WAITING = {"ImagePullBackOff", "ErrImagePull"}


# -- the cluster ----------------------------------------------------------------------------------------

def api_client(*, host: str | None = None, kubeconfig: str | None = None, context: str | None = None):
    """A kubernetes ApiClient: an explicit ``host`` (tests, ``kubectl proxy``), in-cluster, or kubeconfig."""
    require("kubernetes", "k8s", "fruitlens k8s")
    from kubernetes import client, config

    if host:
        conf = client.Configuration()
        conf.host = host
        return client.ApiClient(conf)
    try:
        if not kubeconfig and not context and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
            return client.ApiClient()
        return config.new_client_from_config(config_file=kubeconfig, context=context)
    except config.ConfigException as exc:
        raise K8sError(f"no Kubernetes configuration ({exc}); set KUBECONFIG or --kubeconfig/--context") from None


@dataclass(frozen=True)
class PodState:
    """One pod as `status` shows it."""

    name: str
    phase: str
    detail: str = ""  # container state: running, waiting: Reason, terminated: Reason (exit N)
    exit_code: int | None = None
    reason: str = ""  # why it is not running or failed, in one line
    disrupted: bool = False  # a DisruptionTarget condition: drained, evicted, preempted (not the job's fault)

    def line(self) -> str:
        text = f"{self.name}  {self.phase}"
        if self.detail:
            text += f"  {self.detail}"
        if self.reason and self.reason not in self.detail:
            text += f"  ({self.reason})"
        return text


@dataclass(frozen=True)
class JobStatus:
    """Where one release's job is: ``state`` is pending, running, succeeded or failed."""

    release: str
    namespace: str
    job: str
    state: str
    reason: str = ""
    driver: PodState | None = None
    executors: tuple[PodState, ...] = ()

    @property
    def finished(self) -> bool:
        return self.state in ("succeeded", "failed")

    @property
    def exit_code(self) -> int:
        """0 when the job succeeded; the driver's exit code (or 1) when it failed; 0 while not finished."""
        if self.state != "failed":
            return 0
        code = self.driver.exit_code if self.driver else None
        return code if code else 1

    def lines(self) -> list[str]:
        head = f"job/{self.job}  {self.state}"
        if self.reason:
            head += f"  {self.reason}"
        out = [head]
        out.append("driver:    " + (self.driver.line() if self.driver else "(no pod yet)"))
        out.append(f"executors: {len(self.executors)}")
        out += ["  " + e.line() for e in self.executors]
        if not self.finished and unschedulable_executors(self):
            out.append("no executor can be scheduled: Spark waits for them forever (the Job's activeDeadlineSeconds "
                       "ends it); fit executor.* sizing, nodeSelector and tolerations to the nodes")
        return out

    def to_dict(self) -> dict[str, Any]:
        def pod(p: PodState | None):
            return None if p is None else {"name": p.name, "phase": p.phase, "detail": p.detail,
                                           "exit_code": p.exit_code, "reason": p.reason}
        return {"release": self.release, "namespace": self.namespace, "job": self.job, "state": self.state,
                "reason": self.reason, "exit_code": self.exit_code, "driver": pod(self.driver),
                "executors": [pod(e) for e in self.executors]}


def pod_state(pod, container: str | None = None) -> PodState:
    """A V1Pod → :class:`PodState`, the reason taken from the container state, else the pod status."""
    status = pod.status
    phase = (status.phase if status else None) or "Unknown"
    statuses = (status.container_statuses if status else None) or []
    cs = next((c for c in statuses if container is None or c.name == container), None)
    detail, exit_code, reason = "", None, ""
    if cs is not None and cs.state is not None:
        st = cs.state
        if st.terminated is not None:
            exit_code = st.terminated.exit_code
            detail = f"terminated: {st.terminated.reason or 'exited'} (exit {exit_code})"
            if st.terminated.message:
                reason = error_line(st.terminated.message)
            elif exit_code:
                reason = f"{st.terminated.reason or 'Error'}: exit code {exit_code}"
        elif st.waiting is not None:
            detail = f"waiting: {st.waiting.reason or ''}".rstrip()
            if st.waiting.message:
                reason = f"{st.waiting.reason}: {st.waiting.message.strip().splitlines()[0]}"
        elif st.running is not None:
            detail = "running"
    if status is not None and status.reason and not reason:  # Evicted, DeadlineExceeded, ...
        reason = f"{status.reason}: {status.message}" if status.message else status.reason
    if phase == "Pending" and not reason:  # not scheduled: too little CPU/memory, a taint, a selector
        for cond in (status.conditions if status else None) or []:
            if cond.type == "PodScheduled" and cond.status == "False":
                reason = f"{cond.reason or 'Unschedulable'}: {(cond.message or '').strip()}".rstrip(": ")
                detail = detail or cond.reason or "Unschedulable"
    disrupted = any(c.type == "DisruptionTarget" and c.status == "True"
                    for c in (status.conditions if status else None) or [])
    return PodState(name=pod.metadata.name, phase=phase, detail=detail, exit_code=exit_code, reason=reason,
                    disrupted=disrupted)


def unschedulable_executors(status: JobStatus) -> list[PodState]:
    """The executor pods the scheduler cannot place, when no executor runs at all (some running: the job
    progresses, and the rest may be placed when capacity comes)."""
    if not status.executors or any(e.phase == "Running" for e in status.executors):
        return []
    return [e for e in status.executors if e.phase == "Pending" and "Unschedulable" in f"{e.detail} {e.reason}"]


#: Lines that state an error, best first: fruitlens' own, then a Python or Java exception.
_ERROR_LINES = (re.compile(r"^fruitlens: error: "), re.compile(r"^\S*(Error|Exception)(: |$)"),
                re.compile(r"\b(ERROR|Error|Exception)\b"))


def error_line(message: str) -> str:
    """The one line of a termination message that says what went wrong: with FallbackToLogsOnError it is
    the log's tail, whose last lines are usually Spark's shutdown noise, not the error."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    for pattern in _ERROR_LINES:
        found = [line for line in lines if pattern.search(line)]
        if found:
            return found[-1]
    return lines[-1] if lines else ""


class JobClient:
    """Reads and follows the job of one release through the kubernetes client."""

    def __init__(self, api, namespace: str = "default", *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from kubernetes import client

        self.namespace = namespace
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.sleep = sleep
        self.clock = clock

    def _call(self, what: str, fn, *args, **kwargs):
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            hint = " (check the RBAC of your kube context)" if exc.status == 403 else ""
            raise ApiError(f"{what}: {exc.status} {exc.reason} from the API server{hint}", exc.status) from None
        except (HTTPError, OSError) as exc:
            raise K8sError(f"{what}: cannot reach the API server ({type(exc).__name__})") from None

    def _selector(self, release: str, component: str) -> str:
        return f"{INSTANCE_LABEL}={release},{COMPONENT_LABEL}={component}"

    def find_job(self, release: str):
        jobs = self._call(f"listing jobs in {self.namespace}", self.batch.list_namespaced_job, self.namespace,
                          label_selector=self._selector(release, "driver")).items
        return max(jobs, key=lambda j: j.metadata.creation_timestamp or 0) if jobs else None

    def driver_pod(self, release: str):
        pods = self._call(f"listing pods in {self.namespace}", self.core.list_namespaced_pod, self.namespace,
                          label_selector=self._selector(release, "driver")).items
        return max(pods, key=lambda p: p.metadata.creation_timestamp or 0) if pods else None

    def executor_pods(self, release: str) -> list:
        return self._call(f"listing pods in {self.namespace}", self.core.list_namespaced_pod, self.namespace,
                          label_selector=self._selector(release, "executor")).items

    def status(self, release: str) -> JobStatus:
        job = self.find_job(release)
        if job is None:
            raise K8sError(f"no fruitlens job for release {release!r} in namespace {self.namespace}; "
                           "check the name (helm list) and --namespace")
        driver = self.driver_pod(release)
        dstate = pod_state(driver, DRIVER_CONTAINER) if driver is not None else None
        executors = tuple(sorted((pod_state(p) for p in self.executor_pods(release)), key=lambda p: p.name))
        state, reason = self._job_state(job, dstate)
        return JobStatus(release=release, namespace=self.namespace, job=job.metadata.name, state=state,
                         reason=reason, driver=dstate, executors=executors)

    @staticmethod
    def _job_state(job, driver: PodState | None) -> tuple[str, str]:
        status = job.status
        for cond in (status.conditions if status else None) or []:
            if cond.status != "True":
                continue
            if cond.type in ("Complete", "SuccessCriteriaMet"):
                return "succeeded", ""
            if cond.type in ("Failed", "FailureTarget"):
                why = driver.reason if driver and driver.reason else ""
                cond_text = f"{cond.reason}: {cond.message}" if cond.message else (cond.reason or "failed")
                return "failed", f"{why} [{cond_text}]" if why else cond_text
        if status and status.succeeded:
            return "succeeded", ""
        if driver is not None and driver.disrupted and driver.phase in ("Failed", "Running"):
            # the chart's podFailurePolicy replaces it without counting a failure: the Job goes on
            return "pending", f"driver pod {driver.name} was disrupted (drain, eviction, preemption); the Job replaces it"
        if status and status.failed:
            return "failed", (driver.reason if driver and driver.reason else "the driver pod failed")
        if driver is None:
            return "pending", "waiting for the driver pod"
        if driver.phase == "Failed":
            return "failed", driver.reason or "the driver pod failed"
        if driver.phase == "Succeeded":
            return "succeeded", ""
        if driver.phase == "Running":
            return "running", ""
        return "pending", driver.reason or driver.detail

    def wait_for_driver(self, release: str, *, timeout: float, poll: float = 2.0,
                        pull_grace: float = 180.0, progress: Callable[[str], None] | None = None):
        """Wait until the driver container has started (or ended); raise on a start it will never make."""
        deadline = self.clock() + timeout
        first_slow: float | None = None
        last = None
        while True:
            status = self.status(release)
            if status.finished:
                return status
            d = status.driver
            if d is not None and (d.phase in ("Running", "Succeeded", "Failed") or d.exit_code is not None):
                return status
            waiting = d.detail.removeprefix("waiting: ") if d and d.detail.startswith("waiting: ") else ""
            if waiting in FATAL_WAITING:
                raise JobFailed(f"driver pod {d.name} cannot start: {d.reason or waiting}")
            if waiting in SLOW_WAITING:
                first_slow = first_slow if first_slow is not None else self.clock()
                if self.clock() - first_slow > pull_grace:
                    raise JobFailed(f"driver pod {d.name} cannot pull its image: {d.reason or waiting}")
            else:
                first_slow = None
            line = status.lines()[1]
            if progress and line != last:
                progress(line)
                last = line
            if self.clock() > deadline:
                raise K8sError(f"the driver of {release} did not start within {timeout:.0f}s ({line.strip()})")
            self.sleep(poll)

    def stream_log(self, pod_name: str, *, follow: bool = True) -> Iterator[str]:
        """The driver container's log, chunk by chunk; with ``follow`` until the container ends."""
        resp = self._call(f"reading the log of {pod_name}", self.core.read_namespaced_pod_log, pod_name,
                          self.namespace, container=DRIVER_CONTAINER, follow=follow, _preload_content=False)
        try:
            for chunk in resp.stream(4096, decode_content=True):
                yield chunk.decode("utf-8", errors="replace")
        finally:
            resp.release_conn()

    def wait_finished(self, release: str, *, timeout: float, poll: float = 2.0) -> JobStatus:
        """Poll until the Job has its final condition (the Job controller lags the pod by a moment)."""
        deadline = self.clock() + timeout
        while True:
            status = self.status(release)
            if status.finished:
                return status
            if self.clock() > deadline:
                raise K8sError(f"job {status.job} still {status.state} after {timeout:.0f}s")
            self.sleep(poll)

    def follow(self, release: str, out: TextIO = sys.stdout, *, timeout: float = 6 * 3600,
               start_timeout: float = 900, poll: float = 2.0, progress: Callable[[str], None] | None = None,
               stream: bool = True, executor_timeout: float = 600) -> JobStatus:
        """Wait for the driver, stream its log to ``out`` while watching the job, then return the final
        status or raise :class:`JobFailed` (exit code from the driver container).

        No wait is endless: the job must end within ``timeout``, and when every executor pod has been
        unschedulable (too big for any node, a selector or taint nothing matches) for ``executor_timeout``
        seconds the job is reported failed with the scheduler's reason; Spark itself would wait forever.
        """
        started = self.clock()
        status = self.wait_for_driver(release, timeout=start_timeout, poll=poll, progress=progress)
        pump = None
        if stream and status.driver is not None:
            pump = threading.Thread(target=self._pump_log, args=(status.driver.name, out, progress), daemon=True)
            pump.start()
        stuck_since: float | None = None
        while not status.finished:
            stuck = unschedulable_executors(status)
            if stuck:
                stuck_since = self.clock() if stuck_since is None else stuck_since
                if self.clock() - stuck_since >= executor_timeout:
                    raise JobFailed(
                        f"job {status.job}: no executor could be scheduled for {executor_timeout:.0f}s "
                        f"({stuck[0].name}: {stuck[0].reason or stuck[0].detail}); Spark would wait for them forever. "
                        f"Fit the executors to the nodes (executor.* sizing, nodeSelector, tolerations), then "
                        f"`fruitlens k8s delete {release}` and submit again", 1)
            else:
                stuck_since = None
            if self.clock() - started > timeout:
                raise K8sError(f"job {status.job} still {status.state} after {timeout:.0f}s (--timeout); it keeps "
                               f"running: `fruitlens k8s status {release}`, or `fruitlens k8s delete {release}`")
            self.sleep(poll)
            status = self.status(release)
        if pump is not None:
            pump.join(timeout=30)  # the rest of the log, which ends with the container
        if status.state == "failed":
            raise JobFailed(f"job {status.job} failed: {status.reason}", status.exit_code)
        return status

    def _pump_log(self, pod_name: str, out: TextIO, progress: Callable[[str], None] | None) -> None:
        try:
            for chunk in self.stream_log(pod_name, follow=True):
                out.write(chunk)
                out.flush()
        except K8sError as exc:  # no log to read (evicted before start, already deleted): the result still counts
            if progress:
                progress(f"no driver log: {exc}")

    def delete(self, release: str) -> list[str]:
        """Delete the release's Job (its driver pod with it) and any executor pods left; names deleted."""
        from kubernetes import client

        gone: list[str] = []
        job = self.find_job(release)
        if job is not None:
            self._call(f"deleting job {job.metadata.name}", self.batch.delete_namespaced_job, job.metadata.name,
                       self.namespace, body=client.V1DeleteOptions(propagation_policy="Background"),
                       _preload_content=False)
            gone.append(f"job/{job.metadata.name}")
        pods = [*(p for p in [self.driver_pod(release)] if p is not None), *self.executor_pods(release)]
        for pod in pods:
            try:
                self._call(f"deleting pod {pod.metadata.name}", self.core.delete_namespaced_pod,
                           pod.metadata.name, self.namespace, _preload_content=False)
            except ApiError as exc:
                if exc.status == 404:  # already gone with its Job
                    continue
                raise
            gone.append(f"pod/{pod.metadata.name}")
        return gone
