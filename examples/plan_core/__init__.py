"""A second legacy core in the plan's style, of a different shape than ``seed_core`` (an example to adopt).

``plan_core.state`` keeps everything in module globals: ``active_polls``, and
keyed caches ``CONTEXT`` and ``SESSIONS`` (a dict per agent or session, loaded by
``load_context(agent)`` and written back by ``save_context(agent)``); each inbox is
one list file per agent (``nodes/{agent}/inbox.json``); ``plan_core.agent`` does the
work with load-then-save across two calls.  This ``__init__`` imports ``agent``,
which binds ``from .state import save_polls`` before any adoption can run.
``plan_core.adoption`` adopts it by declarations only (docs/adopting.md).
"""

from . import agent  # noqa: F401  (as the team had it: the sibling is imported, its names bound, at once)
from .agent import join_session, post, read_new, update_context, vote  # noqa: F401
