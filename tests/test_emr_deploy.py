"""deploy/emr-on-eks and the example profile: they parse, agree with each other and with the CLI."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from fruitlens.cli import main
from fruitlens.emr_config import load_profile

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "emr-on-eks"
EXAMPLE = ROOT / "examples" / "emr-profile.yaml"


def test_manifests_are_namespaced_on_the_profile_namespace():
    profile = load_profile(env={}, profile_file=EXAMPLE)
    (namespace,) = yaml.safe_load_all((DEPLOY / "namespace.yaml").read_text())
    assert namespace["kind"] == "Namespace" and namespace["metadata"]["name"] == profile.namespace
    role, binding = yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text())
    assert (role["kind"], binding["kind"]) == ("Role", "RoleBinding")
    assert {role["metadata"]["namespace"], binding["metadata"]["namespace"]} == {profile.namespace}
    assert binding["subjects"] == [{"kind": "User", "name": "emr-containers", "apiGroup": "rbac.authorization.k8s.io"}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_setup_script_parses():
    subprocess.run(["bash", "-n", str(DEPLOY / "setup.sh")], check=True)


def test_example_profile_gives_a_valid_dry_run(capsys):
    assert main(["emr", "submit", "--profile", str(EXAMPLE), "--virtual-cluster-id", "abc123", "--dry-run"]) == 0
    out = capsys.readouterr()
    request = json.loads(out.out)
    assert request["jobDriver"]["sparkSubmitJobDriver"]["entryPointArguments"][:3] == [
        "run", "s3://my-fruitlens-bucket/fruits-360", "s3://my-fruitlens-bucket/runs/latest"]
    assert "@sha256:" in request["configurationOverrides"]["applicationConfiguration"][0]["properties"][
        "spark.kubernetes.container.image"]
    assert "pin the digest" not in out.err  # the example pins a digest (finding 7)
    assert main(["emr", "iam-policy", "--profile", str(EXAMPLE)]) == 0
    policy = json.loads(capsys.readouterr().out)
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert set(by_sid) >= {"ReadInput", "WriteOutput", "WriteLogs"}
    # The docs' runs (runs/r1, runs/latest) are all under the example's output_grant (finding 3).
    assert by_sid["WriteOutput"]["Resource"] == ["arn:aws:s3:::my-fruitlens-bucket/runs",
                                                 "arn:aws:s3:::my-fruitlens-bucket/runs/*",
                                                 "arn:aws:s3:::my-fruitlens-bucket/runs_$folder$"]
    assert main(["emr", "submit", "--profile", str(EXAMPLE), "--virtual-cluster-id", "abc123", "--dry-run",
                 "s3://my-fruitlens-bucket/fruits-360", "s3://my-fruitlens-bucket/runs/r1"]) == 0
