"""`fruitlens doctor`: one line per check with the fix; exit 1 when a local run cannot work."""
from __future__ import annotations

import json

from fruitlens import doctor
from fruitlens.cli import main


def test_doctor_runs_every_check_and_says_ok_on_this_machine(capsys, keras_cache, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(keras_cache))
    code = main(["doctor", "--json"])
    results = json.loads(capsys.readouterr().out)
    names = [r["name"] for r in results]
    assert len(results) >= 5
    for needed in ("python", "java", "python packages", "weights", "free disk", "docker", "aws credentials",
                   "emr profile"):
        assert needed in names
    by_name = {r["name"]: r for r in results}
    for needed in ("python", "java", "python packages", "weights"):
        assert by_name[needed]["status"] == "ok", by_name[needed]
    assert code == 0
    assert all(r["status"] in ("ok", "warn", "fail") for r in results)


def test_missing_weights_fail_with_the_fix_and_exit_1(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("fail") and "weights" in ln)
    assert str(tmp_path) in line
    assert "fix: make setup" in out
    assert out.splitlines()[-1].endswith("1 fail") or " fail" in out.splitlines()[-1]


def test_a_broken_emr_profile_fails_naming_the_problem(tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text("executor_instances: zero\n")
    check = doctor.check_emr_profile(str(profile))
    assert check.status == "fail"
    assert "executor_instances" in check.detail


def test_a_check_that_crashes_is_reported_and_the_others_still_run():
    def check_boom():
        raise RuntimeError("boom")

    results = doctor.run_checks([check_boom, doctor.check_python])
    assert results[0].status == "fail" and "boom" in results[0].detail
    assert results[1].status == "ok"
