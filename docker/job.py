"""The image's Spark entry point: `spark-submit local:///opt/fruitlens/job.py run INPUT OUTPUT ...`.

EMR on EKS (StartJobRun entryPoint) and the Helm chart / Spark operator (mainApplicationFile) need a
script file; it is the `fruitlens` command itself, with the arguments spark-submit passes after it.
"""
import sys

from fruitlens.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
