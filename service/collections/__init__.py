"""Collections: named sets of items stored as codes, searched in the compressed domain.

``errors`` (what can go wrong), ``files`` (the SQLite file format), ``collection`` (one open
collection and its in-memory index), ``store`` (all collections of a data dir), ``filters``
(metadata filters on search), ``transfer`` (export and import), ``schemas``, ``checks`` and
``routes`` (the HTTP API), ``cli`` (``monolith-collection``).
"""
