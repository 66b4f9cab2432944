"""``python -m orchestrator.jobs.child``: one job attempt in its own process.

The server's :class:`~orchestrator.jobs.worker.ProcessExecutor` starts it with the payload of
:func:`~orchestrator.jobs.work.run_job` as JSON on stdin. A plain subprocess rather than a
multiprocessing pool: it is killed outright on cancel, re-imports nothing of the server's
``__main__``, and its exit code says how it ended. The process exits when its parent dies
(checked twice a second), so a killed orchestrator leaves no run behind to race the re-run.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time

EXIT_ORPHANED = 70


def _exit_with_parent() -> None:
    parent = os.getppid()

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(EXIT_ORPHANED)
            time.sleep(0.5)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main() -> None:
    _exit_with_parent()
    payload = json.loads(sys.stdin.read())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s job {payload.get('job')} %(levelname)s %(name)s: %(message)s",
    )
    from orchestrator.jobs.work import run_job

    code = run_job(payload)
    # The result is in Redis and the artifact on disk: skip the interpreter's teardown (torch
    # and tokenizer threads make it take seconds) so the job's slot frees at once.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
