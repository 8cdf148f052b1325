"""`fruitlens train | predict | export | report`: from an OUTPUT's features to fruit names.

`train` and `report` use Spark (they read OUTPUT like the pipeline does, local or S3); `predict` and
`export` import neither Spark nor TensorFlow, so `predict` starts in about a second.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def _session(ns: argparse.Namespace):
    """Spark, OUTPUT's store (reached as Spark reaches it) and the config (lock settings)."""
    from fruitlens.config import load_config
    from fruitlens.spark import build_session, require_spark_s3a, store_options
    from fruitlens.storage import uris
    from fruitlens.storage.store import Store

    config = load_config({"output": ns.output, "master": ns.master, "progress": False}, env={})
    spark = build_session(config)
    root = uris.qualify(ns.output)
    require_spark_s3a(spark, root, f"`fruitlens {ns.command}`:")
    return spark, Store(root, store_options(spark, root)), config


def _train(ns: argparse.Namespace) -> int:
    from fruitlens.classify.train import train
    from fruitlens.state.manifest import read_manifest, update_manifest
    from fruitlens.state.run import take_lock

    spark, out, config = _session(ns)
    read_manifest(out)  # a clear error before any work
    summary: dict = {}

    def trained(manifest: dict) -> dict:
        summary.update(train(spark, out, on=ns.on, seed=ns.seed, reg_param=ns.reg_param, max_iter=ns.max_iter,
                             weights=(manifest.get("config") or {}).get("weights", "imagenet"),
                             weights_sha256=(manifest.get("engine") or {}).get("weights_sha256"),
                             engine=manifest.get("engine")))
        manifest["classifier"] = summary
        manifest.setdefault("timings_s", {})["train"] = summary["seconds"]
        return manifest

    with take_lock(out, config) as lock:  # no run may rewrite OUTPUT meanwhile
        update_manifest(out, lock, trained)
    print(json.dumps({"accuracy": summary["accuracy"], "macro_f1": summary["macro_f1"],
                      "test_rows": summary["test_rows"], "classes": summary["classes"],
                      "metrics": summary["metrics"]}))
    return 0


def _report(ns: argparse.Namespace) -> int:
    from fruitlens.classify.report import write_report

    spark, out, _ = _session(ns)
    print(json.dumps({"report": write_report(spark, out)}))
    return 0


def _predict(ns: argparse.Namespace) -> int:
    from fruitlens.classify.predictor import Predictor, expand_paths

    t = time.perf_counter()
    paths = expand_paths(ns.photos)
    if not paths:
        print("fruitlens: error: no image files (.jpg, .jpeg, .png) in the given folders", file=sys.stderr)
        return 2
    predictor = Predictor.load(ns.output, batch_size=ns.batch_size)
    results = predictor.predict_files(paths, top_k=ns.top_k)
    for r in results:
        if ns.json:
            print(json.dumps(r, ensure_ascii=False))
        elif "error" in r:
            print(f"{r['path']}\terror: {r['error']}", file=sys.stderr)
        else:
            print(f"{r['path']}\t" + "  ".join(f"{x['label']} {x['probability']:.3f}" for x in r["top"]))
    failed = sum("error" in r for r in results)
    if ns.timing:
        print(f"predict: {len(results)} photos ({failed} failed) in {time.perf_counter() - t:.3f} s "
              "(model load, decode, inference; not Python's start-up)", file=sys.stderr)
    return 1 if failed == len(results) else 0


def _export(ns: argparse.Namespace) -> int:
    from fruitlens.classify.export import export

    info = export(ns.output, ns.file)
    print(json.dumps({"path": info["path"], "bytes": info["bytes"], "classes": len(info["labels"])}))
    return 0


def register(sub) -> None:
    from fruitlens.state import layout

    p = sub.add_parser("train", help="fit a classifier on OUTPUT's PCA (or raw) features; metrics + predictor")
    p.add_argument("output", metavar="OUTPUT")
    p.add_argument("--on", choices=(layout.PCA, layout.FEATURES), default=layout.PCA, help="train on OUTPUT/pca (default) "
                   "or the raw 1280-d OUTPUT/features")
    p.add_argument("--seed", type=int, default=0, help="seed of the 80/20 split when INPUT had no "
                   "Training/Test folders (default 0)")
    p.add_argument("--reg-param", type=float, default=1e-3, help="L2 regularisation (default 1e-3)")
    p.add_argument("--max-iter", type=int, default=200)
    p.add_argument("--master", help="Spark master (default local[*])")
    p.set_defaults(func=_train)

    p = sub.add_parser("predict", help="label photos with OUTPUT's classifier (no Spark, no TensorFlow)")
    p.add_argument("output", metavar="OUTPUT", help="a trained output: local folder or s3:// URI")
    p.add_argument("photos", nargs="+", metavar="PHOTO|DIR", help="image files, or folders of them")
    p.add_argument("--top-k", type=int, default=3, help="labels shown per photo (default 3)")
    p.add_argument("--json", action="store_true", help="one JSON object per photo (errors: {path, error})")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--timing", action="store_true", help="print the time taken to stderr")
    p.set_defaults(func=_predict)

    p = sub.add_parser("export", help="one ONNX graph: uint8 RGB batch (224x224, or the run's --image-size) → class probabilities")
    p.add_argument("output", metavar="OUTPUT", help="a trained output: local folder or s3:// URI")
    p.add_argument("file", metavar="FILE.onnx")
    p.set_defaults(func=_export)

    p = sub.add_parser("report", help="write OUTPUT/report/index.html: one self-contained page")
    p.add_argument("output", metavar="OUTPUT")
    p.add_argument("--master", help="Spark master (default local[*])")
    p.set_defaults(func=_report)
