"""What a sweep's worker processes import before they are forked: imported once, by the forkserver.

With the "spawn" start method every worker paid its own start-up: a fresh interpreter importing torch, torch._dynamo
(through torch.optim), MLflow, SQLAlchemy's models, Optuna and harness, about 2.5 CPU-seconds, three times over for
three workers on a 2-CPU machine. Forked from a server that imported them once, a worker starts in milliseconds, and
the server's imports run on another CPU while the driver opens the study (see worker.start_workers_early).

Nothing here opens a file, a connection or a thread: a forked child must not share any of those with its siblings.
The collector stays paused (see harness.collector) until each worker's first trial starts training.
"""

from harness import collector

collector.pause()

import mlflow.store.tracking.sqlalchemy_store  # noqa: E402,F401  (the store's ORM models: 0.5 s of a worker's start)
import optuna  # noqa: E402,F401
import torch  # noqa: E402,F401
import torch._dynamo  # noqa: E402,F401  (torch.optim's Optimizer imports it on first use: 0.7 s)

import harness.job.runner  # noqa: E402,F401
import harness.plots  # noqa: E402,F401
import harness.sweep.worker  # noqa: E402,F401
