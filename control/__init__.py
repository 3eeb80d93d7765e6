"""The control plane without a web framework: config store, change planner, supervisor, historian queries.

Layers (see README): ``api → control → dataflows → connectors, operators → core``. Nothing here imports
Litestar; the API and the ``nexus`` command are thin shells over these modules.
"""
