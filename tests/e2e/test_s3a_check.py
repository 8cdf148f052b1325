"""Issue 22, finding 11: an image (or a local Spark) without the S3A connector failed with
`ClassNotFoundException: S3AFileSystem` only where Spark itself reads OUTPUT (`train`, `report`, a PCA over
driver_pca_max_rows): after the whole extraction. Now `train`/`report` and a run that will need it fail
first, with the fix. The venv's PySpark has no hadoop-aws, as the oss image built with WITH_S3A=false."""
from __future__ import annotations

import pytest

from fruitlens.cli import main
from fruitlens.config import ConfigError

pytestmark = pytest.mark.slow


def test_a_spark_without_s3a_is_refused_before_it_reads_s3a():
    from pyspark.sql import SparkSession

    from fruitlens.spark import require_spark_s3a

    spark = SparkSession.builder.master("local[1]").getOrCreate()
    with pytest.raises(ConfigError, match=r"no S3A connector \(org\.apache\.hadoop\.fs\.s3a\.S3AFileSystem.*"
                                          r"make build WITH_S3A=true"):
        require_spark_s3a(spark, "s3a://bucket/out", "--train:")
    require_spark_s3a(spark, "file:/tmp/out", "--train:")  # a local OUTPUT needs no connector


def test_train_on_s3a_output_says_how_to_get_the_connector(capsys):
    code = main(["train", "s3a://fruitlens-nowhere/out", "--master", "local[1]"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "no S3A connector" in err and "WITH_S3A=true" in err
