"""The estimated cost of a run: vCPU-seconds and GB-seconds of what it requested × a price table.

EMR on EKS bills the vCPU and memory a job's pods *request*, per second, from the image pull to the pod's
end; so does AWS Fargate, which EMR on EKS can run on. The estimate takes the run's wall time (the driver's
whole run: setup, extraction, PCA and what followed) × what its pods request:

- the driver: ``spark.driver.cores`` (local mode: the task slots, since that one process does all the work),
  ``spark.driver.memory`` + its overhead;
- each executor registered at the end of the run (with dynamic allocation the count varied: an estimate):
  ``spark.executor.cores``, ``spark.executor.memory`` + overhead + ``spark.executor.pyspark.memory``.

Overhead is Spark's: ``spark.{driver,executor}.memoryOverhead`` if set, else max(384 MiB, factor × memory) with
``spark.{driver,executor}.memoryOverheadFactor`` (default 0.1). Not in the estimate: the EC2 nodes of an
EKS node group (pay per instance: put its per-vCPU-hour and per-GB-hour rates in a price table), EKS' cluster fee,
S3 requests and storage, the minimum of one minute per pod.

:data:`DEFAULT_PRICES` are dated list prices (us-east-1, on demand, Linux/x86); ``--price-table FILE`` (JSON or
YAML of the same shape) replaces them.
"""
from __future__ import annotations

import json
from pathlib import Path

from fruitlens.errors import FruitlensError

#: Amazon EMR on Amazon EKS, us-east-1, USD: on top of the compute (EC2 nodes or Fargate) it runs on.
EMR_ON_EKS_VCPU_HOUR = 0.01012
EMR_ON_EKS_GB_HOUR = 0.00111125

#: Looked up on 2026-12-05 in public material quoting AWS' pricing pages (aws.amazon.com/emr/pricing: "Amazon EMR
#: on Amazon EKS", and aws.amazon.com/fargate/pricing: $0.000011244 per vCPU-second, $0.000001235 per GB-second).
DEFAULT_PRICES = {
    "name": "EMR on EKS on AWS Fargate, us-east-1, on demand",
    "currency": "USD",
    "date": "2026-12-05",
    "source": "aws.amazon.com/emr/pricing (Amazon EMR on Amazon EKS), aws.amazon.com/fargate/pricing (Linux/x86)",
    "rates": [
        {"name": "EMR on EKS (uplift on the pods' requests)", "vcpu_hour": EMR_ON_EKS_VCPU_HOUR,
         "gb_hour": EMR_ON_EKS_GB_HOUR},
        {"name": "AWS Fargate compute", "vcpu_hour": 0.04048, "gb_hour": 0.004445},
    ],
}


class PriceTableError(FruitlensError, ValueError):
    """A ``--price-table`` file is missing or not of the expected shape."""

    exit_code = 2


def load_prices(path: str | None) -> dict:
    """The price table: :data:`DEFAULT_PRICES`, or the JSON/YAML file at ``path`` (checked)."""
    if not path:
        return DEFAULT_PRICES
    import yaml

    where = Path(path.rsplit("/", 1)[-1])
    hint = ('expected {"currency": "USD", "date": "...", "source": "...", "rates": [{"name": "...", '
            '"vcpu_hour": 0.01, "gb_hour": 0.001}]}')
    try:
        text = _read(path)
        table = yaml.safe_load(text) if where.suffix in (".yaml", ".yml") else json.loads(text)
    except (OSError, FruitlensError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise PriceTableError(f"--price-table {path}: cannot read it ({why}); fix the path or URI") from None
    except (ValueError, yaml.YAMLError) as exc:
        raise PriceTableError(f"--price-table {path}: not valid {where.suffix[1:] or 'JSON'} ({exc}); {hint}") from None
    rates = table.get("rates") if isinstance(table, dict) else None
    if not rates or not all(isinstance(r, dict) and isinstance(r.get("vcpu_hour", 0), int | float)
                            and isinstance(r.get("gb_hour", 0), int | float) for r in rates):
        raise PriceTableError(f"--price-table {path}: no list of rates with numeric vcpu_hour / gb_hour; {hint}")
    return {"name": table.get("name", where.name), "currency": table.get("currency", "USD"),
            "date": table.get("date"), "source": table.get("source", path), "rates": rates}


def _read(path: str) -> str:
    """A local file, or a URI (s3://…) read with the environment's credentials, as text."""
    if "://" not in path or path.startswith("file:"):
        return Path(path.removeprefix("file://").removeprefix("file:")).read_text()
    from fruitlens.storage.store import StoreOptions, read_uri

    return read_uri(path, StoreOptions.from_environment()).decode("utf-8")


def _gib(size: str | None, default: str) -> float:
    """A Spark memory size (``2g``, ``2500m``, ``1024k``; no unit: MiB) in GiB."""
    text = str(size or default).strip().lower().removesuffix("b")
    units = {"k": 1 / 1024 ** 2, "m": 1 / 1024, "g": 1.0, "t": 1024.0}
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text) / 1024


def pod_memory_gib(conf: dict[str, str], role: str) -> float:
    """What a driver or executor pod requests: heap + overhead (+ PySpark memory for executors)."""
    heap = _gib(conf.get(f"spark.{role}.memory"), "1g")
    if conf.get(f"spark.{role}.memoryOverhead"):
        overhead = _gib(conf[f"spark.{role}.memoryOverhead"], "0")
    else:
        factor = float(conf.get(f"spark.{role}.memoryOverheadFactor", 0.1))
        overhead = max(384 / 1024, factor * heap)
    pyspark = _gib(conf.get("spark.executor.pyspark.memory"), "0") if role == "executor" else 0.0
    return heap + overhead + pyspark


def requested(conf: dict[str, str], *, local: bool, task_slots: int, executors: int) -> dict:
    """The vCPUs and GiB the run's pods request (see the module docstring)."""
    if local:
        return {"vcpu": float(task_slots), "gb": round(pod_memory_gib(conf, "driver"), 3), "executors": 0}
    vcpu = float(conf.get("spark.driver.cores", 1)) + executors * float(conf.get("spark.executor.cores", 1))
    gb = pod_memory_gib(conf, "driver") + executors * pod_memory_gib(conf, "executor")
    return {"vcpu": vcpu, "gb": round(gb, 3), "executors": executors}


def estimate(resources: dict, seconds: float, images: int, prices: dict) -> dict:
    """The manifest's ``cost``: vCPU- and GB-seconds, the cost per line of the price table and in all, and per
    100k images of this run (``images``: the ones it processed; a grow run's cost is what adding them cost)."""
    vcpu_s, gb_s = resources["vcpu"] * seconds, resources["gb"] * seconds
    lines = [{"name": r.get("name", ""), "cost": round(vcpu_s / 3600 * r.get("vcpu_hour", 0)
                                                          + gb_s / 3600 * r.get("gb_hour", 0), 6)}
             for r in prices["rates"]]
    total = sum(line["cost"] for line in lines)
    return {
        "vcpu_seconds": round(vcpu_s, 1), "gb_seconds": round(gb_s, 1), "requested": resources,
        "seconds": round(seconds, 3), "images": images, "currency": prices["currency"],
        "total": round(total, 6), "lines": lines,
        "per_100k_images": round(total / images * 100_000, 4) if images else None,
        "prices": {k: prices.get(k) for k in ("name", "date", "source")}
                  | {"rates": [dict(r) for r in prices["rates"]]},
    }
