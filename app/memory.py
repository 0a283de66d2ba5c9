"""Start-up objects kept out of the cyclic garbage collector's full collections.

A started Courier process holds a few hundred thousand objects that live as long as it does: modules, FastAPI's
route models, SQLAlchemy's mappers, Celery's app, worker and pool. Python's full collection scans every one of
them, and under load it comes round often: a pause in which the process does nothing else, which was the API's
p99 under concurrency and a visible share of a worker's main process. Frozen, a full collection scans only what
came later (the README's "Performance" section has the figures). Objects made afterwards are collected as
before.
"""

from __future__ import annotations

import gc


def freeze_start_up_objects() -> None:
    """Collect what start-up left as garbage, then move every remaining object out of the collector's reach."""
    gc.collect()
    gc.freeze()
