"""The opt-in faster engines: int8 (ONNX Runtime static quantization) and --image-size 160|128|96."""
from __future__ import annotations

import numpy as np
import pytest

from fruitlens.cli import build_parser
from fruitlens.cli_options import config_from_args, pipeline_args
from fruitlens.config import ConfigError, load_config
from fruitlens.engines.quantize import select_calibration
from fruitlens.state.manifest import OutputExistsError, check_settings
from fruitlens.storage.store import Store

# ------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("cli, message", [
    ({"image_size": 100}, r"--image-size must be one of 224, 160, 128, 96 \(pixels\), got 100"),
    ({"engine": "int8"}, r"--engine must be one of auto, onnx, onnx-int8, keras, got 'int8'"),
])
def test_bad_engine_settings_are_refused_naming_the_choices(cli, message):
    with pytest.raises(ConfigError, match=message):
        load_config({"output": "/o", **cli}, env={})


def test_image_size_and_engine_come_from_cli_env_and_yaml(tmp_path):
    yaml = tmp_path / "c.yaml"
    yaml.write_text("output: /o\nengine: onnx-int8\nimage-size: 128\n")
    assert load_config(config_file=yaml, env={}).image_size == 128
    assert load_config(config_file=yaml, env={}).engine == "onnx-int8"
    assert load_config({"output": "/o"}, env={"FRUITLENS_IMAGE_SIZE": "160"}).image_size == 160
    with pytest.raises(ConfigError, match="FRUITLENS_IMAGE_SIZE: expected int, got 'big'"):
        load_config({"output": "/o"}, env={"FRUITLENS_IMAGE_SIZE": "big"})
    ns = build_parser().parse_args(["run", "in", "out", "--image-size", "96", "--engine", "onnx-int8"])
    assert (config_from_args(ns).image_size, config_from_args(ns).engine) == (96, "onnx-int8")
    assert pipeline_args(ns)[-4:] == ["--engine", "onnx-int8", "--image-size", "96"]  # forwarded to clusters
    assert load_config({"output": "/o"}, env={}).image_size == 224  # the faithful default


# ------------------------------------------------------------------------------------ calibration set


def test_calibration_is_deterministic_class_balanced_training_first_and_location_free():
    paths = [f"s3://b/p/{split}/{cls}/{i}.jpg" for split in ("Training", "Test") for cls in "ABC"
             for i in range(20)]
    chosen = select_calibration(paths, 10, root="s3://b/p/")
    assert len(chosen) == 10 and all("/Training/" in p for p in chosen)
    counts = {cls: sum(f"/{cls}/" in p for p in chosen) for cls in "ABC"}
    assert sorted(counts.values()) == [3, 3, 4]
    moved = select_calibration([p.replace("s3://b/p/", "/data/") for p in reversed(paths)], 10, root="/data/")
    assert [p.replace("/data/", "s3://b/p/") for p in moved] == chosen
    assert select_calibration(paths[40:], 4) == [p for p in select_calibration(paths[40:], 4)]
    assert all("/Test/" in p for p in select_calibration(paths[60:], 4))  # no Training split: any photo


# ------------------------------------------------------------------------------------------ settings


def test_a_resume_with_another_precision_or_size_is_refused_naming_it(tmp_path):
    store = Store(f"file://{tmp_path}")
    store.make_dirs("_fruitlens")
    legacy = {"input": "file:///in", "weights_sha256": "aaa", "image_size": [224, 224]}  # before precision existed
    check_settings(store, legacy, overwrite=False)
    check_settings(store, {**legacy, "precision": "fp32"}, overwrite=False)  # an old output resumes as fp32
    with pytest.raises(OutputExistsError, match=r"precision='fp32', this run has precision='int8'.*--overwrite"):
        check_settings(store, {**legacy, "precision": "int8", "model_sha256": "m"}, overwrite=False)
    with pytest.raises(OutputExistsError, match=r"image_size=\[224, 224\], this run has image_size=\[160, 160\]"):
        check_settings(store, {**legacy, "image_size": [160, 160]}, overwrite=False)


# ------------------------------------------------------------------------------------------ models


# ------------------------------------------------------------------------------------------ end to end


# ------------------------------------------------------------------------------------------ bench


def test_bench_variants_parse_with_the_reference_first():
    import argparse

    from fruitlens.bench.engines import parse_variants

    assert parse_variants("int8-160,fp32-96,int8-160") == [("fp32", 224), ("int8", 160), ("fp32", 96)]
    with pytest.raises(argparse.ArgumentTypeError, match="PRECISION-SIZE such as int8-224, got 'int4-224'"):
        parse_variants("int4-224")


def test_the_bench_classifier_learns_real_features_and_is_deterministic():
    from fruitlens.bench.engines import fit_softmax

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 20))
    y = np.repeat(np.arange(3), 30)
    x = centres[y] + 0.3 * rng.normal(size=(90, 20))
    predict = fit_softmax(x[::2], y[::2], 3)
    assert (predict(x[1::2]) == y[1::2]).mean() > 0.95
    assert (fit_softmax(x[::2], y[::2], 3)(x) == predict(x)).all()


@pytest.mark.parametrize(("flags", "kernel"), [
    ({"avx", "avx2", "fma"}, "AVX2, no VNNI"),  # this machine (Zen 3)
    ({"avx2", "fma", "avx_vnni"}, "AVX-VNNI"),
    ({"avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl"}, "AVX-512 core, no VNNI"),
    ({"avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx_vnni"}, "AVX-512 VNNI"),
    ({"avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "amx_tile", "amx_int8"}, "AMX"),
    ({"sse4_1"}, "SSE (no AVX2)"),
])
def test_the_int8_kernel_is_named_from_the_cpu_flags_as_mlas_dispatches(flags, kernel):
    from fruitlens.bench.engines import int8_kernel

    assert int8_kernel(flags)[0] == kernel


def test_the_kernel_path_names_the_int8_operators_onnx_runtime_ran(tmp_path):
    """A one-Conv QDQ model through ONNX Runtime: the profiled run shows QLinearConv (int8), not Conv."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from fruitlens.bench.engines import kernel_path

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.integers(-5, 5, size=(8, 3, 3, 3)).astype(np.int8), "w")
    inits = [w, numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
             numpy_helper.from_array(np.array(128, np.uint8), "xz"),
             numpy_helper.from_array(np.array(0.01, np.float32), "ws"),
             numpy_helper.from_array(np.array(0, np.int8), "wz"),
             numpy_helper.from_array(np.array(0.05, np.float32), "ys"),
             numpy_helper.from_array(np.array(128, np.uint8), "yz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"]),
             helper.make_node("Conv", ["xd", "wd"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["out"])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    path = tmp_path / "qdq.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    found = kernel_path(str(path), 16, threads=1, flags={"avx2", "fma"})
    assert found["int8_ops"] == {"QLinearConv": 1} and found["float_ops"] == {}
    assert found["path"] == "QLinearConv x1 on MLAS AVX2, no VNNI"
    assert found["providers"][0] == "CPUExecutionProvider" and not list(tmp_path.glob("*profile*"))
