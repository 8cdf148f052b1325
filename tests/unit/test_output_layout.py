"""OUTPUT's on-disk names are a contract: outputs written by earlier versions must still resume, so the
one module that names them (fruitlens.state.layout) must keep spelling them exactly so."""
from __future__ import annotations

import pyarrow as pa

from fruitlens.state import layout, schema


def test_every_path_under_output_keeps_its_name():
    assert (layout.FEATURES, layout.ERRORS, layout.PCA, layout.PCA_MODEL, layout.MANIFEST) == (
        "features", "errors", "pca", "pca_model", "manifest.json")
    assert (layout.SETTINGS, layout.RUN, layout.LOCK) == (
        "_fruitlens/settings.json", "_fruitlens/run.json", "_fruitlens/lock.json")
    assert (layout.METRICS, layout.REPORT_PAGE) == ("classifier/metrics.json", "report/index.html")
    assert layout.PREDICTOR_FILES == ("model.onnx", "head.npz", "labels.json")
    assert layout.pinned_int8("ab" * 32, 160) == "_fruitlens/model-int8-abababababababab-160px.onnx"
    assert layout.ENTRIES == {"_fruitlens", "features", "errors", "pca", "pca_model", "manifest.json",
                              "classifier", "predictor", "report"}
    assert layout.temporary(".manifest.json.tmp-12-abcd1234") and not layout.temporary(".notes.tmp-1")


def test_committed_schemas_keep_their_columns_and_types():
    assert schema.FEATURES_SCHEMA.names == ["path", "label", "split", "features", "size", "modified"]
    assert schema.ERRORS_SCHEMA.names == ["path", "error", "kind", "size", "modified"]
    assert schema.FEATURES_SCHEMA.field("modified").type == pa.timestamp("us", tz="UTC")
    assert schema.PCA_SCHEMA.names == ["path", "label", "split", "pca"]
    assert schema.PCA_DDL == "path string, label string, split string, pca array<float>"
