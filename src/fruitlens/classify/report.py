"""`fruitlens report`: OUTPUT/report/index.html, one self-contained page a person reads instead of JSON.

The Parquet folders are read through Spark, the records (manifest, the classifier's metrics) and the
misclassified photos' bytes through :class:`~fruitlens.storage.store.Store`, so an s3:// OUTPUT works as
a local one. Figures are matplotlib PNGs inlined as data:
URIs; the page fetches nothing.
"""
from __future__ import annotations

import base64
import html
import io
import json
from importlib import resources
from string import Template

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from fruitlens.errors import require
from fruitlens.progress import log
from fruitlens.redact import redact
from fruitlens.state import layout
from fruitlens.state.layout import OutputLayout
from fruitlens.state.manifest import OutputMissingError, read_json
from fruitlens.state.schema import DECODE, ERROR, KIND, LABEL, PATH, PCA
from fruitlens.storage import uris
from fruitlens.storage.store import Store, StoreError, read_uri

MAX_ERRORS_SHOWN = 200
MAX_MAP_POINTS = 4000
THUMB = (128, 128)


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _table(header: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{_esc(c)}</td>' if i in numeric else f"<td>{_esc(c)}</td>"
                         for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(uri: str, alt: str, cls: str = "fig") -> str:
    return f'<img class="{cls}" src="{uri}" alt="{_esc(alt)}">'


def _missing(text: str) -> str:
    return f'<p class="muted">{_esc(text)}</p>'


def variance_figure(pca: dict) -> str:
    import matplotlib.pyplot as plt

    ratios = pca.get("explained_variance") or []
    if not ratios:
        return _missing(f"No PCA: {pca.get('skipped', 'not fitted')}.")
    k = len(ratios)
    cumulative = np.cumsum(ratios)
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    x = np.arange(1, k + 1)
    ax.bar(x, ratios, color="#9cc3e6", width=1.0, label="per component")
    ax.plot(x, cumulative, color="#1f5f99", lw=2, label="cumulative")
    target = pca.get("target_variance")
    if target:
        ax.axhline(target, color="#c0392b", ls="--", lw=1, label=f"target {target:.0%}")
    ax.axvline(k, color="#555", ls=":", lw=1)
    ax.annotate(f"k = {k}\n{cumulative[-1]:.1%} kept", (k, cumulative[-1]), textcoords="offset points",
                xytext=(-70, -40), fontsize=9)
    ax.set(xlabel="principal component", ylabel="explained variance ratio", ylim=(0, 1.02),
           title="Explained variance (kept components)")
    ax.legend(loc="center right", fontsize=8)
    return _img(_png(fig), "explained variance curve")


def pca_map_figure(spark: SparkSession, out: Store, pca: dict) -> str:
    import matplotlib.pyplot as plt

    if (pca.get("k") or 0) < 2 or not out.exists(layout.PCA):
        return _missing("No 2-D map: PCA kept fewer than 2 components or was not fitted.")
    data = spark.read.parquet(uris.spark_read_path(OutputLayout(out.uri).pca))
    rows = pca.get("rows") or data.count()
    if rows > MAX_MAP_POINTS:
        data = data.sample(fraction=min(1.0, 1.2 * MAX_MAP_POINTS / rows), seed=0).limit(MAX_MAP_POINTS)
    points = data.select(LABEL, F.col(PCA)[0].alias("x"), F.col(PCA)[1].alias("y")).toPandas()
    fig, ax = plt.subplots(figsize=(6.2, 4.6))
    labels = sorted(points["label"].unique())
    cmap = plt.get_cmap("tab20", max(len(labels), 1))
    for i, label in enumerate(labels):
        sel = points[points["label"] == label]
        ax.scatter(sel["x"], sel["y"], s=6, alpha=0.7, color=cmap(i), label=label)
    ax.set(xlabel="PC 1", ylabel="PC 2", title=f"Photos on the first two components ({len(points)} shown)")
    if len(labels) <= 20:
        ax.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5))
    return _img(_png(fig), "2-D PCA map coloured by class")


def confusion_figure(metrics: dict) -> str:
    import matplotlib.pyplot as plt

    cm_info = metrics["confusion_matrix"]
    labels, cm = cm_info["labels"], np.asarray(cm_info["rows_true_columns_predicted"])
    n = len(labels)
    size = min(3 + 0.45 * n, 14)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    support = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, support, out=np.zeros(cm.shape), where=support > 0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (test split; colour = row share)")
    return _img(_png(fig), "confusion matrix")


def thumbnails(paths: list[str], options) -> dict[str, str]:
    """path → a small JPEG data: URI, reading the photos (local files and S3 alike) one by one, by their
    literal names (a reader such as Spark's binaryFile would expand glob characters)."""
    from PIL import Image

    options = options.with_bucket_regions(*paths)  # INPUT's bucket may not be OUTPUT's
    out, unread = {}, []
    for path in paths:
        try:
            content = read_uri(path, options)
        except StoreError as exc:  # moved since the run: the grid shows its name only
            unread.append(str(exc))
            continue
        try:
            with Image.open(io.BytesIO(content)) as img:
                img = img.convert("RGB")
                img.thumbnail(THUMB)
                buf = io.BytesIO()
                img.save(buf, "JPEG", quality=85)
        except OSError:
            continue
        out[path] = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    if unread:
        log(f"report: cannot read {len(unread)} of the misclassified photos (first: {unread[0][:200]})")
    return out


def misclassified_grid(out: Store, metrics: dict | None) -> str:
    if metrics is None:
        return _missing("No classifier yet: run `fruitlens train OUTPUT`.")
    wrong = metrics.get("misclassified") or []
    if not wrong:
        return _missing(f"None: every one of the {metrics['test_rows']} test photos was labelled correctly.")
    thumbs = thumbnails([w["path"] for w in wrong], out.options)
    cells = []
    for w in wrong:
        name = w["path"].rsplit("/", 1)[-1]
        pic = _img(thumbs[w["path"]], name, cls="thumb") if w["path"] in thumbs else _missing("(unreadable)")
        cells.append(f"<figure>{pic}<figcaption title=\"{_esc(w['path'])}\"><b>{_esc(w['label'])}</b> → "
                     f"{_esc(w['predicted'])} ({w['probability']:.2f})<br><span class=\"muted\">{_esc(name)}"
                     "</span></figcaption></figure>")
    total = metrics["test_rows"] - round(metrics["accuracy"] * metrics["test_rows"])
    note = f"<p>{len(wrong)} of {total} shown (true → predicted, probability).</p>"
    return note + '<div class="grid">' + "".join(cells) + "</div>"


def _money(value, currency: str) -> str:
    return "–" if value is None else f"{value:,.4f} {currency}" if value < 100 else f"{value:,.2f} {currency}"


def cost_section(manifest: dict) -> str:
    """The run's estimated cost (fruitlens.cost) and, for an OUTPUT grown over runs, each run's."""
    c = manifest.get("cost")
    if not c:
        return _missing("No cost estimate: this OUTPUT was made before fruitlens estimated costs.")
    cur, req, prices = c["currency"], c["requested"], c["prices"]
    rows = [["requested", f"{req['vcpu']:g} vCPU, {req['gb']:g} GB"
             + (f" ({req['executors']} executors and the driver)" if req.get("executors") else " (local: one process)")],
            ["wall time", f"{c['seconds']:.1f} s"],
            ["vCPU-seconds", f"{c['vcpu_seconds']:,.1f}"], ["GB-seconds", f"{c['gb_seconds']:,.1f}"]]
    rows += [[line["name"], _money(line["cost"], cur)] for line in c["lines"]]
    rows += [["estimated cost of this run", _money(c["total"], cur)],
             [f"per 100k images (this run processed {c['images']:,})", _money(c["per_100k_images"], cur)]]
    rates = "; ".join(f"{r.get('name', '')}: {r.get('vcpu_hour', 0):g}/vCPU-hour, {r.get('gb_hour', 0):g}/GB-hour"
                      for r in prices["rates"])
    note = (f"<p class=\"muted\">Price table: {_esc(prices.get('name'))} ({_esc(rates)}; {_esc(cur)}), dated "
            f"{_esc(prices.get('date'))}, from {_esc(prices.get('source'))}. The requests × the wall time; EC2 "
            "nodes, S3 and the EKS cluster fee are not in it (<code>--price-table</code> sets other rates).</p>")
    runs = [h for h in manifest.get("history") or [] if h.get("cost")]
    history = ""
    if len(runs) > 1:
        history = "<h3>Cost of each run</h3>" + _table(
            ["run", "end", "images processed", "seconds", "cost", "per 100k images"],
            [[h.get("run_id", "")[:12], h.get("end", ""), (h.get("counts") or {}).get("processed", "–"),
              f"{h.get('seconds', 0):.1f}", _money(h["cost"]["total"], h["cost"]["currency"]),
              _money(h["cost"]["per_100k_images"], h["cost"]["currency"])] for h in runs], numeric={2, 3, 4, 5})
    return _table(["", "estimate"], rows, numeric={1}) + note + history


def pca_note(pca: dict) -> str:
    """How this run's PCA was made (fruitlens.pca_state): what it read and whether the basis was kept."""
    inc = pca.get("incremental")
    if not inc:
        return ""
    read = (f"read {inc['rows_read']:,} feature rows of {inc['files_read']:,} files, reused the moments of "
            f"{inc['rows_reused']:,}" if inc["moments"] == "incremental"
            else f"read all {inc['rows_read']:,} feature rows ({inc.get('why_full', '')})")
    if inc["basis"] == "kept":
        basis = (f"kept the basis (variance loss {inc['variance_loss']:.1e}, centre offset {inc['centre_offset']:.1e}, "
                 f"tolerance {inc['drift_tolerance']:g}) and projected the {inc['rows_projected']:,} new rows")
    else:
        basis = f"refit the basis ({inc.get('why_refit', '')}) and projected all {inc['rows_projected']:,} rows"
    return f"<p>This run's PCA {_esc(read)}; it {_esc(basis)}.</p>"


def render(spark: SparkSession, out: Store) -> str:
    matplotlib = require("matplotlib", "report", "the report's figures")
    matplotlib.use("Agg")
    where = OutputLayout(out.uri)
    manifest = read_json(out, layout.MANIFEST)
    if manifest is None:
        raise OutputMissingError(f"{where.manifest} not found: OUTPUT is not a finished fruitlens output "
                                 "(`fruitlens status OUTPUT` tells more)")
    manifest = redact(manifest)  # a manifest written before fruitlens masked secrets
    metrics = read_json(out, layout.METRICS)
    pca = manifest.get("pca") or {}
    counts = manifest.get("counts") or {}
    clf = manifest.get("classifier") or metrics or {}

    cards = [("images", counts.get("matched")), ("features", counts.get("features")),
             ("errors", counts.get("errors")), ("PCA k", pca.get("k", "–")),
             ("test accuracy", f"{clf['accuracy']:.2%}" if clf.get("accuracy") is not None else "–"),
             ("macro-F1", f"{clf['macro_f1']:.3f}" if clf.get("macro_f1") is not None else "–"),
             ("est. cost per 100k images", _money((manifest.get("cost") or {}).get("per_100k_images"),
                                                  (manifest.get("cost") or {}).get("currency", "")))]

    errors_table = _missing("No errors: every matched image was decoded.")
    if counts.get("errors") and out.exists(layout.ERRORS):
        # Error files written before `kind` existed lack the column: merged, it is null there (decode).
        errors = spark.read.option("mergeSchema", "true").parquet(uris.spark_read_path(where.errors))
        kind = F.coalesce(F.col(KIND), F.lit(DECODE)) if KIND in errors.columns else F.lit(DECODE)
        rows = errors.select(PATH, ERROR, kind.alias(KIND)).orderBy(PATH).limit(MAX_ERRORS_SHOWN).collect()
        more = counts["errors"] - len(rows)
        errors_table = (_table(["path", "kind", "error"], [[r["path"], r["kind"], r["error"]] for r in rows])
                        + (f"<p class=\"muted\">… and {more} more (OUTPUT/errors)</p>" if more > 0 else ""))

    timings = manifest.get("timings_s") or {}
    ips = manifest.get("images_per_second") or {}
    timing_rows = [[stage, f"{s:.1f}"] for stage, s in timings.items()]
    timing_rows += [[f"images/s ({k})", f"{v:.1f}"] for k, v in ips.items()]

    if metrics:
        per_class = metrics["per_class"]
        per_class_table = _table(
            ["class", "accuracy (recall)", "precision", "F1", "test photos"],
            [[name, f"{m['recall']:.3f}", f"{m['precision']:.3f}", f"{m['f1']:.3f}", m["support"]]
             for name, m in per_class.items()], numeric={1, 2, 3, 4})
        summary = (f"<p>Multinomial logistic regression on <b>{_esc(metrics['on'])}</b>, trained on "
                   f"{metrics['train_rows']} photos, tested on {metrics['test_rows']} (split: "
                   f"{_esc(metrics['split'])}): accuracy <b>{metrics['accuracy']:.4f}</b>, macro-F1 "
                   f"<b>{metrics['macro_f1']:.4f}</b>.</p>")
        confusion = confusion_figure(metrics)
    else:
        per_class_table = confusion = ""
        summary = _missing("No classifier yet: run `fruitlens train OUTPUT` (or `fruitlens run … --train`).")

    versions = manifest.get("versions") or {}
    engine = manifest.get("engine") or {}
    page = Template(resources.files("fruitlens.classify").joinpath("report.html").read_text(encoding="utf-8"))
    return page.substitute(
        title=_esc(manifest.get("input", out.uri)),
        subtitle=_esc(f"input {manifest.get('input')} → output {manifest.get('output', out.uri)}; engine "
                      f"{engine.get('name')} {engine.get('precision', 'fp32')} {engine.get('image_size', 224)}px; "
                      f"fruitlens {manifest.get('fruitlens')}"),
        cards="".join(f'<div class="card">{_esc(k)}<b>{_esc(v)}</b></div>' for k, v in cards),
        counts_table=_table(["count", "value"], [[k, v] for k, v in counts.items()], numeric={1}),
        errors_table=errors_table,
        timings_table=_table(["stage", "seconds"], timing_rows, numeric={1}),
        cost_section=cost_section(manifest),
        pca_note=pca_note(pca),
        variance_figure=variance_figure(pca),
        pca_map_figure=pca_map_figure(spark, out, pca),
        classifier_summary=summary,
        confusion_figure=confusion,
        per_class_table=per_class_table,
        misclassified_grid=misclassified_grid(out, metrics),
        versions_table=_table(["library", "version"], [[k, v] for k, v in versions.items()]),
        config_json=_esc(json.dumps(manifest.get("config") or {}, indent=2, ensure_ascii=False)),
    )


def write_report(spark: SparkSession, out: Store) -> str:
    """Render and write OUTPUT/report/index.html; return its URI."""
    page = render(spark, out)
    out.make_dirs(layout.REPORT)
    out.write_text(layout.REPORT_PAGE, page)
    uri = OutputLayout(out.uri).uri(layout.REPORT_PAGE)
    log(f"report: {uri}")
    return uri
