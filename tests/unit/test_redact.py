"""Secrets given with --conf, the environment or YAML never reach a record or a printed line."""
from __future__ import annotations

import json

import pytest

from fruitlens import console
from fruitlens.cli import main
from fruitlens.progress import log
from fruitlens.redact import redact, redact_text
from fruitlens.state.layout import RUN
from fruitlens.state.lock import LOCK, RunLock
from fruitlens.state.manifest import publish
from fruitlens.state.run import command_line
from fruitlens.storage.store import Store

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
KEY_ID = "AKIAIOSFODNN7EXAMPLE"


@pytest.mark.parametrize("text", [
    f"fruitlens run s3://b/in s3://b/out --conf spark.hadoop.fs.s3a.secret.key={SECRET} --conf x=1",
    f"fruitlens run in out --conf spark.hadoop.fs.s3a.session.token={SECRET}",
    f'{{"fs.s3a.secret.key": "{SECRET}", "fs.s3a.endpoint": "http://s3:8333"}}',
    f"fruitlens emr submit --db-password {SECRET}",
    f"cannot read s3a://{KEY_ID}:{SECRET}@bucket/in: denied",
    f"spark.hadoop.fs.s3a.access.key={KEY_ID}",
    f"MY_API_TOKEN: {SECRET}",
])
def test_secrets_in_text_are_masked_and_the_rest_is_kept(text):
    masked = redact_text(text)
    assert SECRET not in masked and KEY_ID not in masked and "***" in masked
    assert masked[:12] == text[:12]  # what the value belongs to stays readable


def test_prose_and_ordinary_settings_are_left_alone():
    text = "the session token expired: check the credentials; --lock-timeout 60 --conf spark.sql.shuffle.partitions=4"
    assert redact_text(text) == text
    assert redact({"pca_k": 5, "spark_conf": {"spark.sql.shuffle.partitions": "4"}, "input": "s3://b/in"}) == \
        {"pca_k": 5, "spark_conf": {"spark.sql.shuffle.partitions": "4"}, "input": "s3://b/in"}


def test_values_of_secret_environment_variables_are_masked_wherever_they_appear(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    assert redact_text(f"request signed with {SECRET} failed") == "request signed with *** failed"


def test_the_manifest_the_run_record_and_the_lock_hold_no_secret(tmp_path, monkeypatch):
    from fruitlens.config import load_config
    from fruitlens.state.run import start_record

    yml = tmp_path / "job.yaml"
    yml.write_text(f"spark_conf:\n  spark.hadoop.fs.s3a.secret.key: {SECRET}\n")
    config = load_config({"output": str(tmp_path / "out"),
                          "spark_conf": {"spark.hadoop.fs.s3a.access.key": KEY_ID}},
                         env={"FRUITLENS_SPARK_CONF": f"spark.hadoop.fs.s3a.session.token={SECRET}"},
                         config_file=yml)
    monkeypatch.setattr("sys.argv", ["fruitlens", "run", "in", "out", "--conf",
                                     f"spark.hadoop.fs.s3a.secret.key={SECRET}"])
    store = Store(f"file://{tmp_path / 'out'}")
    with RunLock.acquire(store, command=command_line(), timeout_s=60) as lock:
        lock_text = (tmp_path / "out" / LOCK).read_text()
        start_record(store, lock)
        publish(store, lock, {"command": lock.info["command"], "config": config.to_dict(), "history": []})
    for text in (lock_text, (tmp_path / "out" / RUN).read_text(), (tmp_path / "out" / "manifest.json").read_text()):
        assert SECRET not in text and KEY_ID not in text
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["config"]["spark_conf"] == {"spark.hadoop.fs.s3a.secret.key": "***",
                                                "spark.hadoop.fs.s3a.session.token": "***",
                                                "spark.hadoop.fs.s3a.access.key": "***"}
    assert manifest["command"] == "fruitlens run in out --conf spark.hadoop.fs.s3a.secret.key=***"


def test_log_lines_the_error_line_and_the_jvm_tail_are_masked(tmp_path, capsys, monkeypatch):
    import io
    import os

    from fruitlens import cli
    from fruitlens.errors import FruitlensError

    console.configure("normal")
    log(f"submitting with --conf spark.hadoop.fs.s3a.secret.key={SECRET}")

    def fails(ns):
        raise FruitlensError(f"cannot use fs.s3a.password={SECRET}")

    monkeypatch.setattr(cli, "_run", fails)
    assert main(["run", str(tmp_path / "in"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert SECRET not in err and "fs.s3a.secret.key=***" in err and "fs.s3a.password=***" in err

    r, w = os.pipe()
    reader = console.JvmStderr(os.fdopen(r, "rb"), show=False)
    with os.fdopen(w, "wb") as out:
        out.write(f"WARN S3AFileSystem: fs.s3a.secret.key={SECRET}\n".encode())
    reader._thread.join(timeout=5)
    buf = io.StringIO()
    reader.dump(buf)
    assert SECRET not in buf.getvalue() and "***" in buf.getvalue()
