"""The image's Spark entry point: `spark-submit local:///opt/fruitlens/job.py run INPUT OUTPUT ...`.

EMR on EKS (StartJobRun entryPoint) and the Helm chart / Spark operator (mainApplicationFile) need a
script file; it is the `fruitlens` command itself, with the arguments spark-submit passes after it.
It runs on whatever interpreter Spark picked (spark.pyspark.driver.python, else PYSPARK_DRIVER_PYTHON /
PYSPARK_PYTHON, which an EMR base may point at its old system python3), so before importing anything
of fruitlens it checks that this is the image's venv, and says how to fix it if not. Keep this file
valid for old Pythons (no newer syntax): it must be able to say so on them.
"""
import sys

MINIMUM = (3, 10)
VENV_PYTHON = "/opt/fruitlens/venv/bin/python"


def _wrong_interpreter(why):
    sys.stderr.write(
        "fruitlens: error: job.py runs on %s (Python %s), %s. Spark chose it from spark.pyspark.driver.python / "
        "spark.pyspark.python, else PYSPARK_DRIVER_PYTHON / PYSPARK_PYTHON: set spark.pyspark.python and "
        "spark.pyspark.driver.python to the image's venv (%s; `fruitlens emr submit` sends both).\n"
        % (sys.executable, sys.version.split()[0], why, VENV_PYTHON))
    return 2


if __name__ == "__main__":
    if sys.version_info[:2] < MINIMUM:
        sys.exit(_wrong_interpreter("but fruitlens needs Python >= %d.%d" % MINIMUM))
    try:
        from fruitlens.cli import main
    except ImportError as exc:
        sys.exit(_wrong_interpreter("where fruitlens cannot be imported (%s)" % exc))
    sys.exit(main(sys.argv[1:]))
