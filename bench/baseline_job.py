"""The common public approach to this job, kept only as a benchmark reference (not used by fruitlens).

What most public PySpark + MobileNetV2 feature-extraction projects do: weights broadcast from the
driver, a model rebuilt in each Iterator pandas UDF call, `model.predict` per Arrow batch, a
`repartition(4)`, and a row-at-a-time Python UDF to turn arrays into vectors before Spark ML's PCA.
(The seed project used the full model's `layers[-2]`; the no-top model with average pooling is the same
layer, and is all the offline weights provide.)

usage: baseline_job.py INPUT OUTPUT [K] [LIMIT]
"""
import io
import json
import sys
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
from PIL import Image
from pyspark.ml.feature import PCA
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.sql import SparkSession
from pyspark.sql.functions import col, element_at, pandas_udf, split, udf

src, dst = sys.argv[1], sys.argv[2]
k = int(sys.argv[3]) if len(sys.argv) > 3 else 50
limit = int(sys.argv[4]) if len(sys.argv) > 4 else None
start = time.time()
spark = SparkSession.builder.master("local[*]").config("spark.driver.memory", "4g").getOrCreate()
sc = spark.sparkContext

from tensorflow.keras.applications.mobilenet_v2 import MobileNetV2, preprocess_input  # noqa: E402
from tensorflow.keras.preprocessing.image import img_to_array  # noqa: E402

model = MobileNetV2(weights="imagenet", include_top=False, pooling="avg", input_shape=(224, 224, 3))
broadcast_weights = sc.broadcast(model.get_weights())


def model_fn():
    m = MobileNetV2(weights=None, include_top=False, pooling="avg", input_shape=(224, 224, 3))
    m.set_weights(broadcast_weights.value)
    return m


def preprocess(content):
    img = Image.open(io.BytesIO(content)).convert("RGB").resize([224, 224], Image.BICUBIC)
    return preprocess_input(img_to_array(img))


def featurize_series(m, content_series):
    arr = np.stack(content_series.map(preprocess))
    preds = m.predict(arr, verbose=0)
    return pd.Series([p.flatten() for p in preds])


@pandas_udf("array<float>")
def featurize_udf(content_series_iter: Iterator[pd.Series]) -> Iterator[pd.Series]:
    m = model_fn()
    for content_series in content_series_iter:
        yield featurize_series(m, content_series)


images = spark.read.format("binaryFile").option("pathGlobFilter", "*.jpg").option("recursiveFileLookup", "true").load(src)
if limit:
    images = images.orderBy("path").limit(limit)
images = images.withColumn("label", element_at(split(images["path"], "/"), -2))
features = images.repartition(4).select(col("path"), col("label"), featurize_udf("content").alias("features"))
features.write.mode("overwrite").parquet(dst + "/features")

df = spark.read.parquet(dst + "/features")
to_vector = udf(lambda a: Vectors.dense(a), VectorUDT())
df = df.withColumn("features_vec", to_vector("features"))
pca = PCA(k=k, inputCol="features_vec", outputCol="pca_features").fit(df)
pca.transform(df).select("path", "label", "pca_features").write.mode("overwrite").parquet(dst + "/pca")
n = df.count()
with open(dst + "/baseline.json", "w") as fh:
    json.dump({"images": n, "pca_k": k, "pca_variance_kept": float(np.sum(pca.explainedVariance)),
               "job_s": time.time() - start}, fh)
