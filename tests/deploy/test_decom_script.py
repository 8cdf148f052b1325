"""docker/decom.sh, the local base's /opt/decom.sh: the preStop hook Spark gives executor pods under
spark.decommission.enabled (spark.kubernetes.decommission.script). Run here against a stand-in executor
process that, like Spark's executor, decommissions itself on SIGPWR and then exits."""
from __future__ import annotations

import subprocess
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DECOM = REPO / "docker" / "decom.sh"


def test_decom_signals_the_executor_with_sigpwr_and_waits_for_it_to_exit(tmp_path):
    marker = f"fake-KubernetesExecutorBackend-{uuid.uuid4().hex}"  # only this test's process matches
    got = tmp_path / "got-pwr"
    executor = subprocess.Popen(
        ["bash", "-c", f'trap "touch {got}; sleep 1; exit 0" PWR; while true; do sleep 0.1; done', marker])
    # Reap it as soon as it exits (tini does in the container): a zombie would still answer kill -0.
    reaper = threading.Thread(target=executor.wait, daemon=True)
    reaper.start()
    try:
        time.sleep(0.3)
        log = tmp_path / "termination-log"
        done = subprocess.run(["bash", str(DECOM)], capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin", "DECOM_MATCH": marker, "DECOM_LOG": str(log)})
        assert done.returncode == 0, done.stderr
        assert got.exists(), "the executor got no SIGPWR"
        assert not reaper.is_alive(), "decom.sh returned before the executor exited"
        text = log.read_text()
        assert f"SIGPWR to the executor JVM(s) {executor.pid} at" in text and "done at" in text
    finally:
        executor.kill()


def test_decom_without_an_executor_exits_at_once(tmp_path):
    done = subprocess.run(["bash", str(DECOM)], capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "DECOM_MATCH": f"nothing-{uuid.uuid4().hex}",
                               "DECOM_LOG": str(tmp_path / "log")})
    assert done.returncode == 0 and "no executor JVM found" in done.stdout


def test_the_local_base_installs_it_where_spark_looks():
    dockerfile = (REPO / "docker" / "Dockerfile.base-local").read_text()
    assert "COPY decom.sh /opt/decom.sh" in dockerfile
    assert 'cp docker/decom.sh "$ctx/decom.sh"' in (REPO / "docker" / "base-local.sh").read_text()
    assert "procps" in dockerfile  # pgrep


def test_decom_leaves_the_containers_tini_out(tmp_path):
    """In the pod, pid 1 is `tini -s -- java … KubernetesExecutorBackend`: the same command line as the JVM. It
    must be neither signalled nor waited for (it exits only with the JVM, which would kill the hook first)."""
    marker = f"fake-KubernetesExecutorBackend-{uuid.uuid4().hex}"
    tini = tmp_path / "tini"
    tini.write_bytes(Path("/bin/bash").read_bytes())
    tini.chmod(0o755)
    init = subprocess.Popen([str(tini), "-c", 'trap "exit 3" PWR; while true; do sleep 0.1; done', marker])
    try:
        time.sleep(0.3)
        log = tmp_path / "termination-log"
        done = subprocess.run(["bash", str(DECOM)], capture_output=True, text=True, timeout=30,
                              env={"PATH": "/usr/bin:/bin", "DECOM_MATCH": marker, "DECOM_LOG": str(log)})
        assert done.returncode == 0 and "no executor JVM found" in done.stdout, done.stdout
        assert init.poll() is None, "tini got the decommission signal"
    finally:
        init.kill()
