"""Progress: one line per stage on stderr, and a live task bar while a stage runs in a terminal."""
from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager

from pyspark import SparkContext


def log(message: str) -> None:
    print(f"[fruitlens] {message}", file=sys.stderr, flush=True)


@contextmanager
def task_bar(sc: SparkContext, name: str, *, enabled: bool):
    """Show Spark's finished/total tasks for the jobs started inside the block (terminal only)."""
    if not enabled or not sys.stderr.isatty():
        yield
        return
    from tqdm import tqdm

    group = f"fruitlens-{name}-{time.monotonic_ns()}"
    sc.setJobGroup(group, name)
    stop = threading.Event()
    bar = tqdm(desc=name, unit="task", file=sys.stderr, leave=False)

    def poll() -> None:
        tracker = sc.statusTracker()
        while not stop.wait(0.5):
            done = total = 0
            for job_id in tracker.getJobIdsForGroup(group):
                job = tracker.getJobInfo(job_id)
                for stage_id in job.stageIds if job else []:
                    stage = tracker.getStageInfo(stage_id)
                    if stage:
                        done += stage.numCompletedTasks
                        total += stage.numTasks
            bar.total = max(total, 1)
            bar.n = done
            bar.refresh()

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.close()
        sc.setLocalProperty("spark.jobGroup.id", None)
