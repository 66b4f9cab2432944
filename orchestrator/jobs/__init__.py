"""Router-training jobs: submitted over the admin API, queued durably in Redis, trained in
their own process (or a Ray task), saved as versioned artifacts, promoted to every replica
without a restart. See docs/training-jobs.md.

The modules, in the order a job meets them:

* :mod:`.models` — the admin API's wire models (``POST /admin/jobs`` → :class:`Job`).
* :mod:`.queue` — the Redis queue: a hash per job, a lease per running job, Lua transitions.
* :mod:`.worker` — :class:`JobRunner`, in every server process: claims jobs up to the
  cluster-wide limit, starts them, renews their leases, recovers jobs whose process died.
* :mod:`.work` — what a run does (also ``orchestrator train``): load, embed, fit, evaluate on
  the held-out split, save the artifact with its metrics and plot.
* :mod:`.child` — ``python -m orchestrator.jobs.child``: one run in its own process.
* :mod:`.promotion` — the promoted version per strategy, read by every replica's StrategySet.

Importing this package is cheap: nothing heavy loads until a job runs.
"""
