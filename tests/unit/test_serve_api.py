"""`fruitlens serve` over real HTTP (uvicorn on 127.0.0.1) with a tiny predictor as train writes it:
answers, errors, probes, metrics, the page. Real photos; no Spark, no weights."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import image_bytes, real_images, truncated_jpeg
from serve_support import Server, multipart, write_predictor

from fruitlens.bench import serve_payloads as hostile
from fruitlens.classify.predictor import Predictor
from fruitlens.serve.app import create_app
from fruitlens.serve.config import ServeConfig, ServeConfigError, available_cpus


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "out"
    write_predictor(out)
    return out


@pytest.fixture(scope="module")
def server(output):
    config = ServeConfig(str(output), max_body_bytes=1 << 20, max_photos=4, threads=1, decode_threads=2)
    with Server(create_app(config)) as s:
        s.wait_ready()
        yield s


def _photos(n=3):
    return [p.read_bytes() for p in real_images(per_class=1, classes=n)]


def test_raw_jpeg_and_png_bodies_get_label_top_and_model(server):
    jpeg, png = _photos(1)[0], image_bytes("RGB", "PNG")
    for body, ctype in ((jpeg, "image/jpeg"), (png, "image/png"), (jpeg, "application/octet-stream")):
        status, headers, answer = server.json("POST", "/v1/predict", body, {"Content-Type": ctype})
        assert status == 200, answer
        assert answer["label"] in ("a", "b", "c") and answer["label"] == answer["top"][0]["label"]
        assert len(answer["top"]) == 3 and answer["probability"] == answer["top"][0]["probability"]
        assert answer["model"]["trained_at"] == "2026-01-01T00:00:00+00:00"
        assert answer["model"]["test_accuracy"] == 0.5 and len(answer["model"]["version"]) == 12
        assert len(answer["id"]) == 64 and headers["x-content-type-options"] == "nosniff"
    status, _, answer = server.json("POST", "/v1/predict?top_k=1", jpeg, {"Content-Type": "image/jpeg"})
    assert status == 200 and len(answer["top"]) == 1


def test_answers_equal_predictor_predict_bytes(server, output):
    photos = _photos(3)
    predictor = Predictor.load(str(output))
    expected = [predictor.predict_bytes(["x"], [p])[0] for p in photos]  # as `fruitlens predict PHOTO`
    for body, want in zip(photos, expected, strict=True):
        _, _, got = server.json("POST", "/v1/predict", body, {"Content-Type": "image/jpeg"})
        assert got["label"] == want["label"]
        for g, w in zip(got["top"], want["top"], strict=True):
            assert g["label"] == w["label"] and g["probability"] == pytest.approx(w["probability"], abs=2e-6)


def test_multipart_photos_come_back_in_order_with_per_photo_errors(server, output):
    photos = _photos(2)
    body, ctype = multipart([("photo", "a.jpg", photos[0]), ("note", None, b"hello"),
                             ("photo", "b.txt", b"not an image at all"), ("other", "c.jpg", photos[1])])
    status, _, answer = server.json("POST", "/v1/predict", body, {"Content-Type": ctype})
    assert status == 200
    results = answer["results"]
    expected = Predictor.load(str(output)).predict_bytes(["x", "y"], photos)
    assert [r.get("label") for r in results] == [expected[0]["label"], None, expected[1]["label"]]
    assert results[1] == {"error": {"code": "not_an_image", "photo": 1,
                                    "message": "these bytes are not an image; send a JPEG or PNG photo"}}
    one, ctype = multipart([("photo", "a.jpg", photos[0])])
    status, _, answer = server.json("POST", "/v1/predict", one, {"Content-Type": ctype})
    assert status == 200 and answer["label"] == expected[0]["label"]  # one part: the object itself
    bad, ctype = multipart([("photo", "a.txt", b"junk"), ("photo", "b.jpg", truncated_jpeg())])
    status, _, answer = server.json("POST", "/v1/predict", bad, {"Content-Type": ctype})
    assert status == 422 and [r["error"]["code"] for r in answer["results"]] == ["not_an_image", "corrupt_image"]


def _bad_cases():
    jpeg = real_images(per_class=1, classes=1)[0].read_bytes()
    too_many, ctype = multipart([("p", f"{i}.jpg", jpeg) for i in range(5)])
    return [
        ("garbage", hostile.garbage(4096, seed=3), "image/jpeg", 422, "not_an_image"),
        ("truncated", truncated_jpeg(), "image/jpeg", 422, "corrupt_image"),
        ("png bomb", hostile.png_bomb(8000), "image/png", 422, "too_many_pixels"),
        ("huge header jpeg", hostile.jpeg_huge_header(jpeg), "image/jpeg", 422, "too_many_pixels"),
        ("text/plain", jpeg, "text/plain", 415, "unsupported_media_type"),
        ("gif", hostile.gif(), "application/octet-stream", 415, "unsupported_format"),
        ("empty", b"", "image/jpeg", 400, "empty_body"),
        ("bad multipart", b"--x\r\nnonsense", "multipart/form-data; boundary=x", 400, "bad_multipart"),
        ("no boundary", b"--x--", "multipart/form-data", 400, "bad_multipart"),
        ("too many photos", too_many, ctype, 400, "too_many_photos"),
        ("too large", b"\xff" * ((1 << 20) + 1), "image/jpeg", 413, "body_too_large"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_inputs_get_json_4xx_and_the_service_goes_on(server, case):
    _, body, ctype, want_status, want_code = case
    status, headers, answer = server.json("POST", "/v1/predict", body, {"Content-Type": ctype})
    assert (status, answer["error"]["code"]) == (want_status, want_code), answer
    assert answer["error"]["message"] and headers["content-type"] == "application/json"
    ok, _, _ = server.json("POST", "/v1/predict", _photos(1)[0], {"Content-Type": "image/jpeg"})
    assert ok == 200


def _reply(s) -> str:
    """One whole HTTP response from a socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")))
    while len(body) < length:
        body += s.recv(65536)
    return (head + b"\r\n\r\n" + body).decode("latin-1")


def test_a_declared_oversized_body_is_refused_unread_and_a_chunked_one_at_the_limit(server):
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:  # headers only: never the body
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                  b"Content-Length: 25000000\r\nExpect: 100-continue\r\n\r\n")
        reply = _reply(s)
    assert reply.startswith("HTTP/1.1 413") and "body_too_large" in reply and "100 Continue" not in reply
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"\xff" * 65536
        try:
            for _ in range(40):  # 2.6 MB, over the 1 MiB limit
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        except OSError:
            pass  # the server answered and closed at the limit
        reply = _reply(s)
    assert reply.startswith("HTTP/1.1 413") and "body_too_large" in reply


def test_unknown_routes_and_methods_get_json(server):
    status, _, answer = server.json("GET", "/nope")
    assert status == 404 and answer["error"]["code"] == "not_found"
    status, _, answer = server.json("GET", "/v1/predict")
    assert status == 405 and answer["error"]["code"] == "method_not_allowed"


def test_healthz_readyz_before_and_after_the_model_appears(tmp_path):
    out = tmp_path / "out"
    with Server(create_app(ServeConfig(str(out), poll_s=0.1, threads=1))) as s:
        assert s.json("GET", "/healthz")[0] == 200
        status, headers, answer = s.json("GET", "/readyz")
        assert status == 503 and answer["ready"] is False
        status, headers, answer = s.json("POST", "/v1/predict", _photos(1)[0], {"Content-Type": "image/jpeg"})
        assert status == 503 and answer["error"]["code"] == "not_ready" and int(headers["retry-after"]) >= 1
        write_predictor(out)
        ready = s.wait_ready()
        assert ready["model"]["test_accuracy"] == 0.5
        assert s.json("POST", "/v1/predict", _photos(1)[0], {"Content-Type": "image/jpeg"})[0] == 200


def test_metrics_expose_requests_latency_batches_errors_and_model_version(server):
    server.json("POST", "/v1/predict", _photos(1)[0], {"Content-Type": "image/jpeg"})
    server.json("POST", "/v1/predict", b"junk", {"Content-Type": "image/jpeg"})
    status, headers, data = server.request("GET", "/metrics")
    text = data.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    version = server.json("GET", "/readyz")[2]["model"]["version"]
    for line in ('fruitlens_serve_requests_total{route="/v1/predict",status="200"}',
                 'fruitlens_serve_request_seconds_bucket{le="0.05",route="/v1/predict"}',
                 "fruitlens_serve_batch_size_count", 'fruitlens_serve_errors_total{code="not_an_image"}',
                 f'fruitlens_serve_model_info{{test_accuracy="0.5",trained_at="2026-01-01T00:00:00+00:00",version="{version}"}} 1.0',
                 'fruitlens_serve_photos_total{outcome="labelled"}', "process_resident_memory_bytes"):
        assert line in text, line


def test_page_is_self_contained_with_a_strict_csp(server):
    status, headers, data = server.request("GET", "/")
    html = data.decode()
    assert status == 200 and headers["content-type"].startswith("text/html")
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp and "connect-src 'self'" in csp
    assert "http://" not in html and "https://" not in html and "<script src" not in html
    assert 'id="file"' in html and 'fetch("/v1/predict"' in html


def test_serve_imports_neither_spark_jvm_tensorflow_nor_boto3():
    # every serve module, and what the service loads (the predictor, the upload store, the CLI's parser)
    modules = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "src/fruitlens/serve").glob("*.py")
                     if p.stem not in ("__init__", "__main__"))
    code = ("import sys; " + "; ".join(f"import fruitlens.serve.{m}" for m in modules) + "; "
            "import fruitlens.classify.predictor; "
            "bad = [m for m in ('pyspark', 'py4j', 'tensorflow', 'keras', 'tf2onnx', 'boto3', 'botocore', "
            "'kubernetes', 'matplotlib') "
            "if m in sys.modules]; print(bad)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_bad_options_exit_with_one_clear_line(tmp_path):
    for args, words in ((["gs://bucket/out"], "gs://"), ([str(tmp_path), "--max-batch", "0"], "--max-batch")):
        done = subprocess.run([sys.executable, "-m", "fruitlens.serve", *args], capture_output=True, text=True,
                              timeout=60)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert lines[0].startswith("fruitlens: error: ") and words in lines[0]
    with pytest.raises(ServeConfigError, match="--port"):
        ServeConfig(str(tmp_path), port=70000)


def test_available_cpus_honours_the_cgroup_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert available_cpus(str(tmp_path)) == min(2, available_cpus(str(tmp_path / "none")))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cpus(str(tmp_path)) == available_cpus(str(tmp_path / "none"))


def test_settings_flow_file_then_environment_then_flags_into_one_config(tmp_path):
    import argparse

    from fruitlens.serve import cli as serve_cli

    parser = argparse.ArgumentParser()
    serve_cli.add_arguments(parser)
    settings = tmp_path / "serve.yaml"
    settings.write_text("max_queue: 50\nmax_batch: 16\nkeep_uploads: s3://bucket/uploads\n")
    env = {"FRUITLENS_SERVE_MAX_BATCH": "8", "FRUITLENS_SERVE_ALLOW_NEW_LABELS": "true",
           "FRUITLENS_SERVE_CONFIG": str(settings)}
    config = serve_cli.config_from(parser.parse_args([str(tmp_path)]), env=env)
    assert (config.max_batch, config.max_queue, config.allow_new_labels) == (8, 50, True)
    assert config.keep_uploads == "s3://bucket/uploads" and config.port == 8080  # ServeConfig's default
    config = serve_cli.config_from(parser.parse_args([str(tmp_path), "--max-batch", "4"]), env=env)
    assert config.max_batch == 4
    with pytest.raises(ServeConfigError, match="FRUITLENS_SERVE_PORT: expected int"):
        serve_cli.config_from(parser.parse_args([str(tmp_path)]), env={"FRUITLENS_SERVE_PORT": "http"})
    settings.write_text("max_batchez: 3\n")
    with pytest.raises(ServeConfigError, match=r"unknown settings \['max_batchez'\]"):
        serve_cli.config_from(parser.parse_args([str(tmp_path), "--config", str(settings)]), env={})
