"""deploy/emr-on-eks and the example profile: they parse, agree with each other and with the CLI."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from fruitlens.cli import main
from fruitlens.deploy.emr.iam import base36
from fruitlens.deploy.emr.profile import load_profile

ROOT = Path(__file__).resolve().parents[2]
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


# --- setup.sh against test doubles of the aws / kubectl / eksctl CLIs --------------------------------

FAKE_AWS = r'''#!PYTHON
"""Test double of the aws CLI: answers the calls setup.sh makes from files in $FAKE_DIR, logs every call."""
import json, os, shutil, sys
d = os.environ["FAKE_DIR"]
args = sys.argv[1:]
with open(os.path.join(d, "calls.log"), "a") as log:
    log.write(" ".join(args) + "\n")
def opt(name):
    return args[args.index(name) + 1] if name in args else None
def keep(name, uri):
    shutil.copy(uri.removeprefix("file://"), os.path.join(d, name))
cmd = " ".join(args[:2])
if cmd == "sts get-caller-identity":
    print(os.environ["FAKE_ACCOUNT"])
elif cmd == "eks describe-cluster" and opt("--query") == "cluster.accessConfig.authenticationMode":
    print(os.environ["FAKE_AUTH_MODE"])
elif cmd == "eks describe-cluster":
    print("https://oidc.eks.eu-west-1.amazonaws.com/id/NEWCLUSTER")
elif cmd == "eks describe-access-entry":
    sys.exit(254)
elif cmd == "iam get-role":
    path = os.path.join(d, "existing-trust.json")
    if not os.path.exists(path):
        sys.exit(254)
    print(open(path).read())
elif cmd == "iam update-assume-role-policy":
    keep("applied-trust.json", opt("--policy-document"))
elif cmd == "iam create-role":
    keep("applied-trust.json", opt("--assume-role-policy-document"))
elif cmd == "iam put-role-policy":
    keep("applied-policy.json", opt("--policy-document"))
elif cmd == "logs describe-log-groups":
    print(0)
elif cmd == "emr-containers create-virtual-cluster":
    print("newvirtualcluster0001")
elif cmd == "eks describe-addon":
    sys.exit(254)
elif cmd == "eks list-pod-identity-associations":
    print(0)
'''
FAKE_TOOL = '''#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$FAKE_DIR/calls.log"
if [ "$1" = apply ]; then cat > /dev/null; fi
if [ "$1 $2" = "get iamidentitymapping" ]; then exit 1; fi
'''
FAKE_FRUITLENS = '''#!/usr/bin/env bash
# The real CLI, except `emr clusters` (an AWS call): no virtual cluster yet.
if [ "$1 $2" = "emr clusters" ]; then exit 0; fi
exec PYTHON -m fruitlens "$@"
'''


def run_setup(tmp_path, auth_mode: str, role_arn: str, existing_trust: dict | None = None, extra: str = ""):
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "aws").write_text(FAKE_AWS.replace("PYTHON", sys.executable))
    for tool in ("kubectl", "eksctl"):
        (bin_dir / tool).write_text(FAKE_TOOL)
    (bin_dir / "fruitlens").write_text(FAKE_FRUITLENS.replace("PYTHON", sys.executable))
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    if existing_trust:
        (tmp_path / "existing-trust.json").write_text(json.dumps(existing_trust))
    profile = tmp_path / "p.yaml"
    profile.write_text(f"region: eu-west-1\nexecution_role_arn: {role_arn}\nvirtual_cluster_name: fruitlens\n"
                       "namespace: fruit-ns\ninput: s3://b/in\noutput: s3://b/out\nlog_group: /fruitlens/emr\n"
                       "log_retention_days: 14\n" + extra)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_DIR": str(tmp_path),
           "FAKE_ACCOUNT": role_arn.split(":")[4], "FAKE_AUTH_MODE": auth_mode,
           "FRUITLENS": str(bin_dir / "fruitlens"), "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(["bash", str(DEPLOY / "setup.sh"), "eks-fruit", str(profile)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return (tmp_path / "calls.log").read_text().splitlines(), done.stdout


@pytest.mark.slow
def test_setup_uses_access_entries_in_api_mode_and_merges_the_trust(tmp_path):
    """Findings 8, 9, 13: API mode ignores aws-auth; a shared role's other trust is kept; logs expire."""
    other = {"Effect": "Allow", "Principal": {"Federated": "arn:aws-cn:iam::123456789012:oidc-provider/o/id/OTHER"},
             "Action": "sts:AssumeRoleWithWebIdentity", "Condition": {"StringLike": {"o/id/OTHER:sub": "x"}}}
    calls, out = run_setup(tmp_path, "API", "arn:aws-cn:iam::123456789012:role/fruitlens-job",
                           {"Version": "2012-10-17", "Statement": [other]})
    slr = "arn:aws-cn:iam::123456789012:role/AWSServiceRoleForAmazonEMRContainers"  # the role's partition
    assert (f"eks create-access-entry --cluster-name eks-fruit --region eu-west-1 --principal-arn {slr} "
            "--username emr-containers") in calls
    assert not [c for c in calls if c.startswith("eksctl") and "iamidentitymapping" in c]
    assert not [c for c in calls if "arn:aws:" in c]
    trust = json.loads((tmp_path / "applied-trust.json").read_text())
    assert trust["Statement"][0] == other and len(trust["Statement"]) == 2
    assert "NEWCLUSTER:sub" in json.dumps(trust["Statement"][1]) and ":fruit-ns:" in json.dumps(trust["Statement"][1])
    assert "logs put-retention-policy --region eu-west-1 --log-group-name /fruitlens/emr --retention-in-days 14" in calls
    policy = json.loads((tmp_path / "applied-policy.json").read_text())
    assert any("arn:aws-cn:s3:::b/out_$folder$" in s["Resource"] for s in policy["Statement"])


@pytest.mark.slow
def test_setup_maps_aws_auth_in_config_map_mode_and_creates_the_role(tmp_path):
    calls, _ = run_setup(tmp_path, "CONFIG_MAP", "arn:aws:iam::123456789012:role/fruitlens-job")
    assert any(c.startswith("eksctl create iamidentitymapping --cluster eks-fruit") for c in calls)
    assert not [c for c in calls if "create-access-entry" in c]
    assert any(c.startswith("iam create-role --role-name fruitlens-job") for c in calls)
    trust = json.loads((tmp_path / "applied-trust.json").read_text())
    assert len(trust["Statement"]) == 1


def test_setup_script_passes_shellcheck():
    if not shutil.which("shellcheck"):
        if os.environ.get("CI") == "true":
            pytest.fail("shellcheck is missing (.ci/setup.d/30-emr.sh installs it)")
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    subprocess.run(["shellcheck", str(DEPLOY / "setup.sh"), str(ROOT / "docker" / "base-emr-local.sh")], check=True)


def test_make_emr_setup_takes_the_profile_from_the_environment(tmp_path):
    """Finding 16: with only FRUITLENS_EMR_PROFILE exported, `make emr-setup EKS_CLUSTER=...` must not exit 2."""
    env = {**os.environ, "FRUITLENS_EMR_PROFILE": str(EXAMPLE)}
    env.pop("EMR_PROFILE", None)
    done = subprocess.run(["make", "--no-print-directory", "-n", "emr-setup", "EKS_CLUSTER=eks-fruit"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f'bash deploy/emr-on-eks/setup.sh "eks-fruit" "{EXAMPLE}"' in done.stdout
    env.pop("FRUITLENS_EMR_PROFILE")
    dry = subprocess.run(["make", "--no-print-directory", "-n", "emr-dry-run"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert "--profile" not in dry.stdout  # nothing given: the CLI's own defaults, no empty --profile ""


@pytest.mark.slow
def test_setup_with_eks_pod_identity_associates_the_role_instead_of_oidc(tmp_path):
    """Finding 16: EKS Pod Identity as the alternative to IRSA."""
    calls, _ = run_setup(tmp_path, "API", "arn:aws:iam::123456789012:role/fruitlens-job", extra="identity: pod-identity\n")
    assert not [c for c in calls if "associate-iam-oidc-provider" in c]
    assert "eks create-addon --cluster-name eks-fruit --region eu-west-1 --addon-name eks-pod-identity-agent" in calls
    assert ("emr-containers create-role-associations --cluster-name eks-fruit --region eu-west-1 --namespace fruit-ns "
            "--role-name fruitlens-job") in calls
    sas = [c.split("--service-account ")[1].split()[0] for c in calls if "list-pod-identity-associations" in c]
    assert sas == [f"emr-containers-sa-spark-{c}-123456789012-{base36('fruitlens-job')}"
                   for c in ("client", "driver", "executor")]
    trust = json.loads((tmp_path / "applied-trust.json").read_text())
    assert trust["Statement"] == [{"Effect": "Allow", "Principal": {"Service": "pods.eks.amazonaws.com"},
                                   "Action": ["sts:AssumeRole", "sts:TagSession"]}]
