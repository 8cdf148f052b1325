"""`fruitlens train`: a Spark ML classifier on the PCA (or raw) features, its metrics, and the plain
arrays `fruitlens predict` / `export` need (so they run without Spark or TensorFlow).

OUTPUT/classifier/          Spark ML PipelineModel: vector → StringIndexer(labels) → LogisticRegression → IndexToString
OUTPUT/classifier/metrics.json   accuracy, macro-F1, per-class precision/recall/support, confusion matrix
OUTPUT/predictor/           model.onnx (the MobileNetV2 export the features were made with: same image size
                            and precision), head.npz (PCA + LR arrays), labels.json
"""
from __future__ import annotations

import io
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from pyspark.ml import PipelineModel
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.feature import IndexToString, StringIndexer
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from fruitlens.engines import ENGINES, prepare_model
from fruitlens.engines.model import sha256_file
from fruitlens.errors import FruitlensError
from fruitlens.pca import projection_arrays
from fruitlens.progress import log
from fruitlens.state import layout
from fruitlens.state.layout import OutputLayout
from fruitlens.state.schema import FEATURES, LABEL, PATH, PCA, SPLIT
from fruitlens.storage import uris
from fruitlens.storage.store import Store, fetch

#: Inputs the classifier can be trained on: the column holding the vector in that Parquet folder.
SOURCES = {layout.PCA: PCA, layout.FEATURES: FEATURES}
#: Misclassified test photos kept in metrics.json (the report shows them as thumbnails).
MAX_MISCLASSIFIED = 60
TEST_FRACTION = 0.2


class TrainError(FruitlensError, ValueError):
    """The output cannot be trained on (no PCA, one class, empty split...)."""


def split_rows(data: DataFrame, seed: int) -> tuple[DataFrame, DataFrame, str]:
    """Training/Test from the split folders when both exist; else a seeded random 80/20 split."""
    splits = {r["split"] for r in data.select("split").distinct().collect()}
    if {"Training", "Test"} <= splits:
        return data.where(F.col("split") == "Training"), data.where(F.col("split") == "Test"), "folders"
    train, test = data.randomSplit([1 - TEST_FRACTION, TEST_FRACTION], seed=seed)
    return train, test, f"random {1 - TEST_FRACTION:.0%}/{TEST_FRACTION:.0%} (seed {seed})"


def fit_classifier(train: DataFrame, *, reg_param: float, max_iter: int) -> PipelineModel:
    """vector → prediction, probability, predicted_label. Label order is alphabetical.

    The indexer stage only matters for fitting: on rows without a ``label`` column Spark skips it, so
    the saved model maps a vector alone to a label."""
    indexer = StringIndexer(inputCol="label", outputCol="label_index", stringOrderType="alphabetAsc").fit(train)
    if len(indexer.labels) < 2:
        raise TrainError(f"training needs at least 2 classes, found {indexer.labels}")
    # L2 keeps the weights finite on separable data (MobileNetV2 features of 10 fruits are).
    lr = LogisticRegression(featuresCol="vector", labelCol="label_index", family="multinomial",
                            regParam=reg_param, elasticNetParam=0.0, maxIter=max_iter)
    lr_model = lr.fit(indexer.transform(train))
    to_label = IndexToString(inputCol="prediction", outputCol="predicted_label", labels=indexer.labels)
    return PipelineModel(stages=[indexer, lr_model, to_label])


def evaluate(model: PipelineModel, test: DataFrame, labels: list[str]) -> dict:
    """Metrics from the confusion counts, aggregated in Spark (the driver sees classes², not rows)."""
    # Without the indexer stage: a label seen only in Test must be scored, not fail the indexer.
    scored = PipelineModel(stages=model.stages[1:]).transform(test)
    counts = scored.groupBy("label", "predicted_label").count().collect()
    order = sorted(set(labels) | {r["label"] for r in counts})
    index = {name: i for i, name in enumerate(order)}
    cm = np.zeros((len(order), len(order)), dtype=np.int64)
    for r in counts:
        cm[index[r["label"]], index[r["predicted_label"]]] += r["count"]
    metrics = metrics_from_confusion(cm, order)
    top = F.array_max(vector_to_array("probability"))
    wrong = (scored.where(F.col("label") != F.col("predicted_label"))
             .select("path", "label", "predicted_label", top.alias("probability"))
             .orderBy("path").limit(MAX_MISCLASSIFIED).collect())
    metrics["misclassified"] = [{"path": r["path"], "label": r["label"], "predicted": r["predicted_label"],
                                 "probability": round(float(r["probability"]), 4)} for r in wrong]
    return metrics


def metrics_from_confusion(cm: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, macro-F1 (over classes with test or predicted rows), per-class precision/recall/support."""
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp),
                   where=(precision + recall) > 0)
    present = (support + predicted) > 0
    total = int(cm.sum())
    return {
        "test_rows": total,
        "accuracy": round(float(tp.sum() / total), 6) if total else None,
        "macro_f1": round(float(f1[present].mean()), 6) if present.any() else None,
        "per_class": {name: {"precision": round(float(precision[i]), 6), "recall": round(float(recall[i]), 6),
                             "f1": round(float(f1[i]), 6), "support": int(support[i])}
                      for i, name in enumerate(labels)},
        "confusion_matrix": {"labels": labels, "rows_true_columns_predicted": cm.tolist()},
    }


def head_arrays(pca_model: PipelineModel | None, classifier: PipelineModel) -> dict[str, np.ndarray]:
    """The plain arrays of the head: centre (/ scale) → project → softmax(W z + b)."""
    indexer, lr = classifier.stages[0], classifier.stages[1]
    arrays = {
        "coefficients": lr.coefficientMatrix.toArray(),  # (classes, k)
        "intercepts": lr.interceptVector.toArray(),      # (classes,)
    }
    if pca_model is not None:  # the PCA step as the pipeline's projection applies it
        arrays["mean"], arrays["scale"], arrays["components"] = projection_arrays(pca_model)
    if len(indexer.labels) != arrays["coefficients"].shape[0]:
        raise TrainError(f"{len(indexer.labels)} labels but {arrays['coefficients'].shape[0]} classes in the model")
    return arrays


def model_file(out: Store, weights: str, sha256: str | None, engine: dict | None = None) -> Path:
    """The engine the features were made with (manifest's ``engine``): the fp32 ONNX export at their
    image size (from the fruitlens cache; exported if missing), or the model OUTPUT keeps (int8: a model
    the weights alone do not make again)."""
    engine = engine or {}
    size = int(engine.get("image_size") or 224)
    precision = engine.get("precision", "fp32")
    if precision != "fp32":
        pinned = engine.get("pinned")
        if not pinned or not out.exists(pinned):
            where = OutputLayout(out.uri).uri(pinned) if pinned else "no pinned model in the manifest"
            made_by = next((s.name for s in ENGINES.values() if s.precision == precision), "...")
            raise TrainError(f"OUTPUT's features were made by an {precision} model, and OUTPUT does not hold it "
                             f"({where}): rerun `fruitlens run --engine {made_by} --overwrite` to make features "
                             "and model together")
        return fetch(OutputLayout(out.uri).uri(pinned), out.options)
    local = weights if weights == "imagenet" else str(fetch(weights, out.options))
    artifact = prepare_model("onnx", local, image_size=size)
    if sha256 and artifact.sha256 != sha256:
        raise TrainError(f"the weights {weights} here (sha256 {artifact.sha256[:12]}) are not the run's "
                         f"({sha256[:12]}); pass the run's weights so predict matches the features")
    return Path(artifact.path)


def write_predictor(out: Store, arrays: dict, labels: list[str], onnx_path: Path, info: dict) -> None:
    """OUTPUT/predictor: what `predict`, `export` and `serve` load (see :data:`fruitlens.state.layout.PREDICTOR_FILES`)."""
    head = io.BytesIO()
    np.savez(head, **arrays)
    files = {layout.PREDICTOR_HEAD: head.getvalue(),
             layout.PREDICTOR_LABELS: (json.dumps(labels, ensure_ascii=False) + "\n").encode("utf-8"),
             layout.PREDICTOR_INFO: (json.dumps(info, indent=2) + "\n").encode("utf-8"),
             layout.PREDICTOR_MODEL: onnx_path.read_bytes()}
    out.delete_tree(layout.PREDICTOR)
    out.make_dirs(layout.PREDICTOR)
    # The info file last, on purpose: `fruitlens serve` loads a new predictor only once it is there (and
    # unchanged after reading the other files), so it never serves a half-written one.
    for name in sorted(files, key=lambda n: (n == layout.PREDICTOR_INFO, n)):
        out.write_bytes(f"{layout.PREDICTOR}/{name}", files[name])


def train(spark: SparkSession, out: Store, *, on: str = "pca", seed: int = 0,
          reg_param: float = 1e-3, max_iter: int = 200, weights: str = "imagenet",
          weights_sha256: str | None = None, engine: dict | None = None) -> dict:
    """Fit, evaluate, save classifier + metrics + predictor; return the manifest's ``classifier`` entry."""
    if on not in SOURCES:
        raise TrainError(f"--on must be one of {', '.join(SOURCES)}, got {on!r}")
    where = OutputLayout(out.uri)
    source = where.uri(on)
    if not out.exists(on):
        hint = "fit it with `fruitlens pca OUTPUT` or train with --on features" if on == "pca" else ""
        raise TrainError(f"{source} not found; {hint or 'run `fruitlens extract` first'}")
    # The predictor must see photos as the features did (size, precision): before any work, fails fast.
    onnx_path = model_file(out, weights, weights_sha256, engine)
    t = time.perf_counter()
    data = (spark.read.parquet(uris.spark_read_path(source))
            .select(PATH, LABEL, SPLIT, array_to_vector(SOURCES[on]).alias("vector")))
    train_rows, test_rows, how = split_rows(data, seed)
    train_rows = train_rows.cache()
    n_train = train_rows.count()
    if n_train == 0 or test_rows.limit(1).count() == 0:
        raise TrainError(f"{source}: the {how} split leaves {'no training' if n_train == 0 else 'no test'} rows")
    model = fit_classifier(train_rows, reg_param=reg_param, max_iter=max_iter)
    train_rows.unpersist()
    labels = list(model.stages[0].labels)
    metrics = evaluate(model, test_rows, labels)
    fit_s = time.perf_counter() - t

    classifier_uri = where.classifier
    model.write().overwrite().save(classifier_uri)
    pca_model = PipelineModel.load(uris.spark_read_path(where.pca_model)) if on == layout.PCA else None
    summary = {
        "on": on, "split": how, "train_rows": n_train, "test_rows": metrics["test_rows"],
        "classes": len(labels), "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
        "reg_param": reg_param, "max_iter": max_iter, "seed": seed,
        "model": classifier_uri, "metrics": where.uri(layout.METRICS),
        "predictor": where.predictor, "engine_sha256": sha256_file(onnx_path),
        "precision": (engine or {}).get("precision", "fp32"), "image_size": (engine or {}).get("image_size", 224),
    }
    out.write_text(layout.METRICS, json.dumps({**summary, **metrics}, indent=2) + "\n")
    write_predictor(out, head_arrays(pca_model, model), labels, onnx_path,
                    {**{k: summary[k] for k in ("on", "classes", "accuracy", "engine_sha256", "precision", "image_size")},
                     "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    summary["seconds"] = round(time.perf_counter() - t, 3)
    log(f"train: {n_train} training rows ({how}), {metrics['test_rows']} test rows: accuracy "
        f"{metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} (fit+evaluate {fit_s:.1f} s)")
    return summary
