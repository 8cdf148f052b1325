"""Every path under OUTPUT, named once. Old outputs are continued, so none of these names may change.

::

    OUTPUT/
      features/part-<digest>.parquet   committed feature rows (one file per worker batch)
      errors/part-<digest>.parquet     committed error rows (decode or read)
      pca/ pca_model/                  the projection and the Spark ML model (scaler → PCA)
      manifest.json                    written last: its presence means OUTPUT is finished
      _fruitlens/                      run state: settings.json, run.json, lock.json, the pinned int8 model,
                                       pca-moments.npz and pca-basis.npz (incremental PCA: fruitlens.pca_state)
      _spark-events/                   Spark's event log of every session on OUTPUT (`fruitlens history`)
      classifier/ predictor/ report/   made from the PCA by `train` / `report` (dropped when it is refit)

This module imports nothing heavy (`predict` uses it). Relative names (``FEATURES``, ``MANIFEST``…) are what a
:class:`~fruitlens.storage.store.Store` rooted at OUTPUT takes; :class:`OutputLayout` spells the same names as URIs, for Spark's readers and messages.
"""
from __future__ import annotations

from dataclasses import dataclass

#: Bumped when the committed layout changes incompatibly.
LAYOUT_VERSION = 1

FEATURES = "features"
ERRORS = "errors"
#: The folders of committed rows, one Parquet file per batch in each.
COMMITTED = (FEATURES, ERRORS)
PCA = "pca"
PCA_MODEL = "pca_model"
MANIFEST = "manifest.json"

STATE = "_fruitlens"
SETTINGS = f"{STATE}/settings.json"
RUN = f"{STATE}/run.json"
LOCK = f"{STATE}/lock.json"
#: The moments (n, Σx, XᵀX) of the committed feature files and which files they sum (fruitlens.pca_state).
PCA_MOMENTS = f"{STATE}/pca-moments.npz"
#: The basis pca/ and pca_model/ hold (mean, scale, components), written once pca/ is complete under it.
PCA_BASIS = f"{STATE}/pca-basis.npz"

CLASSIFIER = "classifier"
METRICS = f"{CLASSIFIER}/metrics.json"
PREDICTOR = "predictor"
PREDICTOR_MODEL, PREDICTOR_HEAD, PREDICTOR_LABELS, PREDICTOR_INFO = "model.onnx", "head.npz", "labels.json", "predictor.json"
#: What `predict` and `export` need of ``predictor/``.
PREDICTOR_FILES = (PREDICTOR_MODEL, PREDICTOR_HEAD, PREDICTOR_LABELS)
REPORT = "report"
REPORT_PAGE = f"{REPORT}/index.html"
#: Made from the PCA (`train`, `report`): stale once the PCA is refit, so removed at the start of a run or
#: a refit; `--train` / `--report` (or the commands) make them again.
DERIVED = (CLASSIFIER, PREDICTOR, REPORT)

#: Everything fruitlens writes directly in OUTPUT: ``--overwrite`` deletes these and nothing else.
ENTRIES = frozenset({STATE, *COMMITTED, PCA, PCA_MODEL, MANIFEST, *DERIVED})

#: Spark's event logs (``--event-log`` default): written by the Spark session while the run holds the lock,
#: so ``--overwrite`` keeps them (the running session's own log is in there); the history of every run.
SPARK_EVENTS = "_spark-events"
#: fruitlens' entries ``--overwrite`` leaves alone.
KEPT = frozenset({SPARK_EVENTS})


def batch_file(kind: str, name: str) -> str:
    """A committed batch: ``kind`` is one of :data:`COMMITTED`, ``name`` from ``ledger.batch_name``."""
    return f"{kind}/{name}"


def pinned_int8(weights_sha256: str, image_size: int) -> str:
    """The int8 model OUTPUT's features were made with (resumed runs and `train` use this very model)."""
    return f"{STATE}/model-int8-{weights_sha256[:16]}-{image_size}px.onnx"


def temporary(name: str) -> bool:
    """A temporary file of an interrupted atomic write of ours directly in OUTPUT (``.manifest.json.tmp-…``)."""
    from fruitlens.storage.store import temporary_of  # pyarrow: not for `predict`, which only needs names

    return temporary_of(name) in ENTRIES


@dataclass(frozen=True)
class OutputLayout:
    """OUTPUT's URI (qualified) and the URIs of what it holds."""

    root: str

    def uri(self, rel: str = "") -> str:
        return f"{self.root.rstrip('/')}/{rel}" if rel else self.root

    @property
    def features(self) -> str:
        return self.uri(FEATURES)

    @property
    def errors(self) -> str:
        return self.uri(ERRORS)

    @property
    def pca(self) -> str:
        return self.uri(PCA)

    @property
    def pca_model(self) -> str:
        return self.uri(PCA_MODEL)

    @property
    def manifest(self) -> str:
        return self.uri(MANIFEST)

    @property
    def classifier(self) -> str:
        return self.uri(CLASSIFIER)

    @property
    def predictor(self) -> str:
        return self.uri(PREDICTOR)
