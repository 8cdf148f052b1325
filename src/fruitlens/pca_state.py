"""Incremental PCA: OUTPUT keeps the moments of its committed features and the basis its projection uses.

A grow run (a few hundred photos added to an OUTPUT with many committed) used to refit PCA by reading
every feature again: linear in the set (9.3 s at 91,518 photos; ~50 GB a day at 10 million on S3).

**Moments.** ``_fruitlens/pca-moments.npz`` holds (n, Σx, XᵀX) in float64, summed over the feature files it
names (with each file's rows and bytes). A run adds the files it does not name yet (the new ones); before
the ledger deletes or rewrites a committed file, :func:`forget` subtracts that file's moments (reading it:
the cost follows what changed). PCA is then refitted from the sum (one 1280 x 1280 eigendecomposition) without
reading the committed features. The sums are of float32 values in float64, so adding or subtracting a file
changes them by float64 rounding only (~1e-16 relative): the refit equals a clean run's to ~1e-12 (the order of
summation differs), far inside the 1e-6 asked. One aggregate, not a sidecar per feature file: one file's XᵀX is
1280 x 1280 float64 = 13 MB, ten times the 1.3 MB feature file (256 rows) it would summarize; that file is
itself the compact form of its moments, and it is read only when it is added or removed.
When the record does not match OUTPUT (a file it names is gone, or has another size: an interrupted run, a
hand edit) or there is none (an OUTPUT from before this record), the moments are computed once from all files.

**Basis.** ``pca/`` (one projection file per feature file, same name) and ``pca_model/`` hold one basis (mean,
scale, components), recorded in ``_fruitlens/pca-basis.npz`` once ``pca/`` is complete under it. After the
refit from the summed moments, the run measures how well the basis in force still fits all current rows,
exactly from the moments (no row is read: :func:`basis_loss`):

- *variance loss*: 1 − (variance of the rows along the kept k components) / (the most any k components
  capture: the sum of the top k eigenvalues);
- *centre offset*: the shift of every projected row caused by the kept centre (mean), as a fraction of the
  variance kept.

If both are at most ``--pca-drift-tolerance`` (default 1e-3: the kept basis explains within 0.1 % of what
the exact refit explains), the basis in force stays: only the new files are projected, with it, so all of
``pca/`` and the model that projects new photos (``pca_model``, the predictor) stay one coordinate system; the
manifest records both figures (the measured distance from a clean run's PCA). Otherwise, or with
``--pca-exact``, changed PCA settings or no recorded basis, the exact refit becomes the basis and every file
is projected again. Both are measured against the basis in force, not the previous run's, so they cannot
creep past the tolerance over many grow runs.

Why not compare the coordinates themselves (the RMS change of every projected row, or the components'
principal angles)? Near the k-th component the eigenvalues are close, so those components turn (and their
signs flip) with any new data: on 4,367 real feature rows, 30 rows more from the same classes change the
projected coordinates by 30 % (RMS) and the largest principal angle's sine is 0.14, while the kept basis
still captures all but 2e-5 of the variance the exact refit does; 300 rows of new classes lose 9e-3 (refit).
A classifier on the projection cares about the variance captured (a rotation within the subspace changes
nothing it can learn), which is what the loss measures.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np

from fruitlens.moments import Moments, file_moments
from fruitlens.pca import Fit, PcaSummary
from fruitlens.progress import log
from fruitlens.state import layout
from fruitlens.storage.store import Store


@dataclass(frozen=True)
class MomentsRecord:
    """The moments of the feature files named in ``files`` (base name → (rows, bytes))."""

    moments: Moments
    files: dict[str, tuple[int, int]]


@dataclass(frozen=True)
class Basis:
    """The basis ``pca/`` and ``pca_model/`` hold, and the settings it was fitted with."""

    fit: Fit
    settings: dict

    @property
    def k(self) -> int:
        return self.fit.summary.k


def pca_settings(config) -> dict:
    """What makes two fits comparable (a PipelineConfig's PCA options)."""
    return {"k": config.pca_k, "variance": config.pca_variance, "standardize": config.pca_standardize}


def _npz(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _load(out: Store, rel: str) -> dict | None:
    if not out.exists(rel):
        return None
    try:
        with np.load(io.BytesIO(out.read_file(rel)), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, KeyError) as exc:  # a damaged record is recomputed, never trusted
        log(f"pca: ignoring {rel} ({exc}); it is recomputed")
        return None


def load_moments(out: Store) -> MomentsRecord | None:
    z = _load(out, layout.PCA_MOMENTS)
    if z is None:
        return None
    files = {name: (int(rows), int(size)) for name, (rows, size) in json.loads(str(z["files"])).items()}
    return MomentsRecord(Moments(int(z["n"]), z["total"], z["gram"]), files)


def save_moments(out: Store, record: MomentsRecord) -> None:
    m = record.moments
    out.write_bytes(layout.PCA_MOMENTS, _npz({"n": np.int64(m.n), "total": m.total, "gram": m.gram,
                                              "files": np.str_(json.dumps(record.files, sort_keys=True))}))


def drop_moments(out: Store) -> None:
    out.delete(out.fs_path(layout.PCA_MOMENTS))


def load_basis(out: Store) -> Basis | None:
    z = _load(out, layout.PCA_BASIS)
    if z is None:
        return None
    meta = json.loads(str(z["meta"]))
    return Basis(Fit(z["mean"], z["std"], z["scale"], z["components"], PcaSummary(**meta["summary"])),
                 meta["settings"])


def save_basis(out: Store, basis: Basis) -> None:
    f = basis.fit
    meta = {"summary": {k: v for k, v in f.summary.as_dict().items() if k != "variance_kept"},
            "settings": basis.settings}
    out.write_bytes(layout.PCA_BASIS, _npz({"mean": f.mean, "std": f.std, "scale": f.scale,
                                            "components": f.components, "meta": np.str_(json.dumps(meta))}))


def drop_basis(out: Store) -> None:
    out.delete(out.fs_path(layout.PCA_BASIS))


def basis_loss(kept: Fit, moments: Moments) -> dict[str, float]:
    """How well the basis in force fits the rows of ``moments`` (see the module docstring), in its own scaling:

    - ``variance_loss`` = 1 − V_kept / V_best: V_kept is the rows' variance along the kept components,
      tr(Aᵀ C A) with A = diag(scale)·components and C the rows' covariance; V_best the sum of the top k
      eigenvalues of diag(scale)·C·diag(scale), the most any k components capture. 0 for the exact refit.
    - ``centre_offset`` = ‖(m − μ_kept)·A‖² / V_kept: the shift of every projected row that the kept centre
      μ_kept causes (m the rows' mean), as a fraction of the variance kept.
    - ``variance_kept``: V_kept over the total (scaled) variance, as the manifest's ``variance_kept``.
    """
    a = kept.scale[:, None] * kept.components
    cov = moments.covariance()
    scaled = cov * np.outer(kept.scale, kept.scale)
    values = np.clip(np.linalg.eigvalsh(scaled)[::-1], 0.0, None)
    best = float(values[:kept.summary.k].sum())
    v_kept = float(np.sum((cov @ a) * a))
    offset = (moments.mean() - kept.mean) @ a
    return {"variance_loss": max(0.0, 1.0 - v_kept / best) if best > 0 else 0.0,
            "centre_offset": float(offset @ offset) / v_kept if v_kept > 0 else 0.0,
            "variance_kept": v_kept / float(values.sum()) if values.sum() > 0 else 0.0}


def forget(out: Store, paths: list[str]) -> int:
    """Before the ledger deletes or rewrites these committed files (filesystem paths): take their rows out
    of the moments record, so it keeps naming only files that exist. Returns the rows taken out.

    The record is written before the files go: killed in between, the next run finds the files it no longer
    names (and drops or re-adds them as its own plan says); a record that names a file that is gone is
    never left behind by this order."""
    prefix = out.fs_path(layout.FEATURES) + "/"
    candidates = {p[len(prefix):] for p in paths if p.startswith(prefix)}
    record = load_moments(out) if candidates else None  # most runs remove nothing: the 13 MB record stays unread
    if record is None:
        return 0
    names = sorted(candidates & set(record.files))
    if not names:
        return 0
    gone, rows = file_moments(out, [prefix + n for n in names])
    if any(rows[prefix + n] != record.files[n][0] for n in names):  # not the file the record summed
        log("pca: the moments record does not match the committed files; it is recomputed by the PCA")
        drop_moments(out)
        return 0
    save_moments(out, MomentsRecord(record.moments - gone, {n: v for n, v in record.files.items() if n not in names}))
    return gone.n
