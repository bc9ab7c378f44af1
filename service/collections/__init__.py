"""Collections: named sets of items stored as codes, searched in the compressed domain.

One-way layers, each importing only those below it (docs/architecture.md, "Collections"):

1. ``errors`` — what can go wrong, as plain exceptions (no HTTP);
2. ``files`` — storage: the SQLite file, transactions, ``meta`` rows; knows nothing of a model;
3. ``binding`` — the model binding: ``StoreModel``, which weights made the codes, compatibility;
4. ``partitions`` — the index: flat or partitioned (IVF), built from the binding and ``meta``;
   ``filters`` — metadata filters evaluated before the scan (beside it, on ``errors`` only);
   ``fitted`` — a collection's own model, the file beside its database; ``vectors`` — kept vectors;
5. ``collection`` — one open collection: composes storage, binding, index and filters;
6. ``store`` — the folder of collections: create, open, list, drop, install;
7. ``migrate`` and ``fitting`` (the long jobs that switch a collection's codes), ``transfer``
   (export and import), ``schemas``, ``checks``, ``routes`` (the HTTP API) and ``cli``
   (``monolith-collection``) on top.
"""
