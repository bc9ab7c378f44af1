"""Everything a running server holds, in one typed object: ``app.state.service``.

One dataclass instead of loose ``app.state`` attributes, so a reader (and the type checker)
sees in one place what exists, what is None until the model has loaded, and who sets it
(``service.app``'s lifespan, nothing else).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from service.batcher import MicroBatcher
from service.collections.fitting import FitJobs
from service.collections.store import Store
from service.metrics import ServiceMetrics
from service.schemas import ModelCard, ModelRef
from service.settings import Settings


@dataclass
class ServiceState:
    settings: Settings
    metrics: ServiceMetrics
    ready: bool = False  # the model, text model and collections are open; set last
    load_error: str | None = None  # why start-up failed; the server stays unready
    batcher: MicroBatcher | None = None  # holds the Monolith and the text model (or None)
    store: Store | None = None
    fits: FitJobs | None = None  # the collections' fit jobs (service.collections.fitting)
    model_ref: ModelRef | None = None
    model_card: ModelCard | None = None
    plot_cache: dict[str, bytes] = field(default_factory=dict)  # reference plots, rendered once
