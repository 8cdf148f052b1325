"""Finding 6 of issue 22: the Job's podFailurePolicy (batch/v1), rendered by helm and carried out by the pod
runner's Job controller (tests/fakes/k8s_pod_runner.py), which the driver-eviction run of
tests/deploy/test_k8s_faults.py relies on.

A drain, eviction or preemption (a DisruptionTarget condition) replaces the driver without counting against
backoffLimit, also with backoffLimit 0; exit code 2 (fruitlens' configuration error) fails the Job at once
whatever backoffLimit allows; any other failure counts as before.
"""
from __future__ import annotations

import pytest
from fakes.fake_k8s import one, render
from fakes.k8s_pod_runner import pod_failure_verdict


def _policy(values: dict | None = None) -> dict | None:
    docs, _ = render(values)
    return one(docs, "Job")["spec"].get("podFailurePolicy")


def test_default_job_ignores_disruptions_and_fails_at_once_on_a_configuration_error():
    policy = _policy()
    assert policy == {"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "FailJob", "onExitCodes": {"containerName": "driver", "operator": "In", "values": [2]}}]}
    # the container the rule names is the driver's
    docs, _ = render()
    assert one(docs, "Job")["spec"]["template"]["spec"]["containers"][0]["name"] == "driver"
    assert one(docs, "Job")["spec"]["template"]["spec"]["restartPolicy"] == "Never"  # the API requires it


def test_policy_can_be_turned_off_or_extended():
    assert _policy({"job": {"podFailurePolicy": {"enabled": False}}}) is None
    extra = {"action": "Count", "onExitCodes": {"operator": "In", "values": [137]}}
    policy = _policy({"job": {"podFailurePolicy": {"ignoreDisruptions": False, "failJobOnExitCodes": [2, 64],
                                                   "extraRules": [extra]}}})
    assert policy["rules"] == [
        {"action": "FailJob", "onExitCodes": {"containerName": "driver", "operator": "In", "values": [2, 64]}}, extra]


@pytest.mark.parametrize("codes, message", [([3, 2], "must be sorted ascending and unique"),
                                            ([2, 2], "are equal")])
def test_exit_codes_out_of_order_or_repeated_fail_with_kubernetes_rule(codes, message):
    _, done = render({"job": {"podFailurePolicy": {"failJobOnExitCodes": codes}}}, check=False)
    assert done.returncode != 0 and message in done.stderr, done.stderr


def test_schema_refuses_exit_code_0_and_unknown_actions():
    for values, where in (({"failJobOnExitCodes": [0]}, "failJobOnExitCodes"),
                          ({"extraRules": [{"action": "Retry", "onExitCodes": {"operator": "In", "values": [1]}}]},
                           "action")):
        _, done = render({"job": {"podFailurePolicy": values}}, check=False)
        assert done.returncode != 0 and where in done.stderr, done.stderr


# -- the pod runner's Job controller reads the same policy ---------------------------------------------------

def _failed(code: int, *conditions: str) -> dict:
    return {"status": {"phase": "Failed",
                       "conditions": [{"type": c, "status": "True"} for c in ("PodScheduled", *conditions)],
                       "containerStatuses": [{"name": "driver", "state": {"terminated": {"exitCode": code}}}]}}


def test_pod_runner_applies_the_rendered_policy_in_rule_order():
    policy = _policy()
    assert pod_failure_verdict(policy, _failed(143, "DisruptionTarget")) == ("Ignore", 0)
    assert pod_failure_verdict(policy, _failed(2, "DisruptionTarget")) == ("Ignore", 0)  # drains win
    assert pod_failure_verdict(policy, _failed(2)) == ("FailJob", 1)
    assert pod_failure_verdict(policy, _failed(1)) == ("Count", None)
    assert pod_failure_verdict(None, _failed(2, "DisruptionTarget")) == ("Count", None)


def test_pod_runner_matches_exit_codes_as_the_api_says():
    not_in = {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [1, 143]}},
                        {"action": "Unknown", "onPodConditions": [{"type": "PodScheduled"}]}]}
    assert pod_failure_verdict(not_in, _failed(2)) == ("FailJob", 0)
    assert pod_failure_verdict(not_in, _failed(143)) == ("Count", None)  # unknown actions are skipped
    other = {"rules": [{"action": "FailJob", "onExitCodes": {"containerName": "sidecar", "operator": "In",
                                                            "values": [2]}}]}
    assert pod_failure_verdict(other, _failed(2)) == ("Count", None)
