"""Issue 22, finding 11: `make push` of an oss image built without the S3A connector (WITH_S3A=false, the
default where Maven Central is unreachable) is refused with the fix, since docs/kubernetes.md ("Another
cluster") pushes it for s3a:// runs. Run with a recording stand-in for docker: nothing is built or pushed."""
from __future__ import annotations

import os
import subprocess

import pytest
from fakes.fake_k8s import REPO


@pytest.fixture
def fake_docker(tmp_path):
    log = tmp_path / "docker.log"
    script = tmp_path / "docker"
    script.write_text(f"""#!/usr/bin/env bash
echo "$*" >> {log}
case "$1 $2" in
  "image inspect") case "$*" in *fruitlens.s3a*) echo "$FAKE_S3A";; *) echo "";; esac ;;
  "push "*) echo "oss: digest: sha256:{'ab' * 32} size: 1234" ;;
esac
""")
    script.chmod(0o755)
    return tmp_path, log


def _push(tmp_path, s3a: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "FAKE_S3A": s3a, "MAKEFLAGS": ""}
    return subprocess.run(["make", "-s", "--no-print-directory", "push", "IMAGE=fruitlens-k22test", "TAG=oss", *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_push_refuses_an_oss_image_without_s3a(fake_docker):
    tmp_path, log = fake_docker
    done = _push(tmp_path, "false")
    assert done.returncode != 0
    assert "built without the S3A connector" in done.stdout and "make build WITH_S3A=true" in done.stdout
    assert not [line for line in log.read_text().splitlines() if line.startswith("push ")]


@pytest.mark.parametrize("s3a, extra", [("true", ()), ("false", ("ALLOW_NO_S3A=1",)), ("", ())],
                         ids=["with-s3a", "allowed", "emr-no-label"])
def test_push_goes_on_with_s3a_or_when_allowed(fake_docker, s3a, extra):
    tmp_path, log = fake_docker
    done = _push(tmp_path, s3a, *extra)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "push fruitlens-k22test:oss" in log.read_text()


def test_build_labels_the_oss_image_with_its_s3a_setting():
    text = (REPO / "mk" / "docker.mk").read_text()
    assert "--label fruitlens.s3a=$(WITH_S3A)" in text
