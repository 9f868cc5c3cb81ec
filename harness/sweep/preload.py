"""What a sweep's worker processes import before they are forked: imported once, by the forkserver.

With the "spawn" start method every worker paid its own start-up: a fresh interpreter importing torch, torch._dynamo
(through torch.optim), MLflow, SQLAlchemy's models, Optuna and harness, about 2.5 CPU-seconds, three times over for
three workers on a 2-CPU machine. Forked from a server that imported them once, a worker starts in milliseconds, and
the server's imports run on another CPU while the driver opens the study (see worker.start_workers_early).

Nothing here opens a file, a store connection or a Python thread: a forked child must not share those with its siblings.
The collector stays paused (see harness.collector) until each worker's first trial starts training. What was imported
is frozen out of the collector's sight (gc.freeze, as Python's documentation advises before forking): the workers'
collections never touch, and so never copy, the pages they share with the server, and the server exits in 0.2 s
instead of 1.2 s when the sweep ends (its last collection had a million objects to walk).
"""

import gc

from harness import collector

collector.pause()

import mlflow.store.tracking.sqlalchemy_store  # noqa: E402,F401  (the store's ORM models: 0.5 s of a worker's start)
import optuna  # noqa: E402,F401
import torch  # noqa: E402,F401
import torch._dynamo  # noqa: E402,F401  (torch.optim's Optimizer imports it on first use: 0.7 s)

import harness.job.runner  # noqa: E402,F401
import harness.plots  # noqa: E402,F401
import harness.sweep.worker  # noqa: E402,F401

gc.freeze()
