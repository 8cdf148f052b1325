"""One typed config: YAML < env < CLI, validated once with messages that say what to fix."""
from __future__ import annotations

import pytest

from fruitlens.config import DEFAULT_INPUT, ConfigError, load_config


def test_defaults_use_the_embedded_input_and_a_95_percent_variance_target():
    cfg = load_config({"output": "out"}, env={})
    assert cfg.input == DEFAULT_INPUT and cfg.pca_variance == 0.95 and cfg.pca_k is None
    assert cfg.engine == "auto" and cfg.weights == "imagenet"


def test_cli_beats_env_beats_yaml(tmp_path):
    yml = tmp_path / "job.yaml"
    yml.write_text("input: /from/yaml\noutput: /out/yaml\nbatch-size: 8\npca_k: 7\nspark_conf: {a: '1'}\n")
    env = {"FRUITLENS_BATCH_SIZE": "16", "FRUITLENS_OUTPUT": "/out/env", "FRUITLENS_SPARK_CONF": "b=2"}
    cfg = load_config({"output": "/out/cli", "spark_conf": {"c": "3"}}, env=env, config_file=yml)
    assert (cfg.input, cfg.output, cfg.batch_size, cfg.pca_k) == ("/from/yaml", "/out/cli", 16, 7)
    assert cfg.spark_conf == {"a": "1", "b": "2", "c": "3"}  # Spark settings merge key by key


def test_a_k_on_the_command_line_replaces_a_variance_target_from_the_file(tmp_path):
    yml = tmp_path / "job.yaml"
    yml.write_text("pca_variance: 0.9\n")
    cfg = load_config({"output": "o", "pca_k": 12}, env={}, config_file=yml)
    assert (cfg.pca_k, cfg.pca_variance) == (12, None)


@pytest.mark.parametrize("cli, message", [
    ({"output": "o", "pca_k": 0}, "--pca-k must be between 1 and 1280"),
    ({"output": "o", "pca_k": 2000}, "between 1 and 1280"),
    ({"output": "o", "pca_variance": 1.5}, r"--pca-variance must be in \(0, 1\]"),
    ({"output": "o", "pca_k": 3, "pca_variance": 0.9}, "either --pca-k or --pca-variance"),
    ({"output": "o", "batch_size": 0}, "--batch-size must be a positive integer"),
    ({"output": "o", "engine": "torch"}, "--engine must be one of auto, onnx, onnx-int8, keras"),
    ({}, "OUTPUT is required"),
])
def test_bad_settings_are_refused_with_what_to_fix(cli, message):
    with pytest.raises(ConfigError, match=message):
        load_config(cli, env={})


def test_env_values_are_typed_and_bad_ones_named(tmp_path):
    assert load_config({"output": "o"}, env={"FRUITLENS_OVERWRITE": "yes"}).overwrite is True
    with pytest.raises(ConfigError, match="FRUITLENS_BATCH_SIZE: expected int, got 'many'"):
        load_config({"output": "o"}, env={"FRUITLENS_BATCH_SIZE": "many"})


def test_unknown_yaml_settings_and_missing_files_are_errors(tmp_path):
    yml = tmp_path / "job.yaml"
    yml.write_text("output: o\nbatchsize: 3\n")
    with pytest.raises(ConfigError, match=r"unknown settings \['batchsize'\]"):
        load_config({}, env={}, config_file=yml)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config({}, env={}, config_file=tmp_path / "nope.yaml")


def test_local_jvm_compiles_with_c1_only_unless_the_user_sets_its_options():
    from fruitlens.config import PipelineConfig
    from fruitlens.spark import spark_settings

    local = spark_settings(PipelineConfig(output="o", master="local[*]"))
    assert local["spark.driver.extraJavaOptions"] == "-XX:TieredStopAtLevel=1"
    mine = spark_settings(PipelineConfig(output="o", master="local[2]", spark_conf={"spark.driver.extraJavaOptions": "-Xss4m"}))
    assert mine["spark.driver.extraJavaOptions"] == "-Xss4m"
    assert "spark.driver.extraJavaOptions" not in spark_settings(PipelineConfig(output="o", master="k8s://https://k:443"))


def test_a_malformed_yaml_file_is_one_line_naming_the_file_and_line_and_exit_2(tmp_path, capsys):
    from fruitlens.cli import main

    yml = tmp_path / "job.yaml"
    yml.write_text("output: /out\nbatch_size: 8\nspark_conf:\n  a: [1, 2\n  b: 3\n")
    with pytest.raises(ConfigError, match=rf"config file {yml}: line \d+, column \d+: not valid YAML"):
        load_config({}, env={}, config_file=yml)
    assert main(["run", "in", "--config", str(yml)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"fruitlens: error: config file {yml}: line ")


def test_retries_and_the_error_rate_bound_are_settings_like_any_other(tmp_path):
    cfg = load_config({"output": "o"}, env={})
    assert (cfg.retry_timeout, cfg.max_error_rate) == (45.0, 0.05)
    yml = tmp_path / "job.yaml"
    yml.write_text("retry-timeout: 3\nmax_error_rate: 0.2\n")
    cfg = load_config({"output": "o"}, env={"FRUITLENS_MAX_ERROR_RATE": "0"}, config_file=yml)
    assert (cfg.retry_timeout, cfg.max_error_rate) == (3.0, 0.0)
    with pytest.raises(ConfigError, match=r"--max-error-rate must be between 0 \(off\) and 1"):
        load_config({"output": "o", "max_error_rate": 5}, env={})
    with pytest.raises(ConfigError, match="--retry-timeout must be 0 or more"):
        load_config({"output": "o", "retry_timeout": -1}, env={})


def test_commit_size_keeps_its_old_names_as_aliases(tmp_path):
    from fruitlens.cli import build_parser
    from fruitlens.cli_options import config_from_args

    for flag in ("--commit-size", "--arrow-batch-size"):
        assert config_from_args(build_parser().parse_args(["run", "in", "out", flag, "12"])).commit_size == 12
    assert load_config({"output": "o"}, env={"FRUITLENS_ARROW_BATCH_SIZE": "9"}).commit_size == 9
    assert load_config({"output": "o"}, env={"FRUITLENS_COMMIT_SIZE": "8", "FRUITLENS_ARROW_BATCH_SIZE": "9"}).commit_size == 8
    yml = tmp_path / "job.yaml"
    yml.write_text("arrow_batch_size: 5\n")
    assert load_config({"output": "o"}, env={}, config_file=yml).commit_size == 5


def test_every_option_comes_from_the_table_with_its_env_var_and_help_default():
    from fruitlens.cli import build_parser
    from fruitlens.config import OPTIONS, PipelineConfig

    assert {f for f in PipelineConfig.__dataclass_fields__} - set(OPTIONS) == {"input", "output"}
    run = next(a for a in build_parser()._subparsers._group_actions[0].choices["run"]._actions
               if a.dest == "batch_size")
    assert run.help == "images per inference call (default 64)" and OPTIONS["batch_size"].default == 64
    assert load_config({"output": "o"}, env={OPTIONS["max_image_mpx"].env: "7"}).max_image_mpx == 7.0
