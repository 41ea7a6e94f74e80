"""A small legacy federation core in the migration plan's own style (an example to adopt the shim on).

``seed_core.core`` is written the way the plan's ``core.py`` is: module globals,
zero-argument ``load_polls()`` / ``save_polls()``, plain non-atomic
``write_text(json.dumps(...))``, ids and naive timestamps of its own.  It knows
nothing about the federation package.  ``seed_core.adoption`` is the one call
that adopts the shim on it (docs/adopting-your-own-code.md walks through it).
"""
