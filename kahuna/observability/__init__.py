"""Observability: cheap in-process counters (`counters`, a leaf: stdlib only, so any layer may
bump them) and the inventory behind upstream's `kowabunga_*` gauges (`inventory`). Exported in
the Prometheus text format by kahuna.api.metrics."""
