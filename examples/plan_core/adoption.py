"""Adopting the shim on ``plan_core``: declarations only.

Importing this module imports ``plan_core`` first (its ``__init__`` binds
``from .state import save_polls`` in ``plan_core.agent``): ``adopt.install``
patches those names too.  Import it before the agents start work (the server's
first line, say).
"""

from federation import adopt

STATE = {
    "load_polls": adopt.Load("polls", into="active_polls"),
    "save_polls": adopt.Save("polls", source="active_polls"),
    "load_context": adopt.Load("context", key="agent", into="CONTEXT"),      # a keyed cache
    "save_context": adopt.Save("context", key="agent", source="CONTEXT"),
    "load_session": adopt.Load("session", key="sid", into="SESSIONS"),
    "save_session": adopt.Save("session", key="sid", source="SESSIONS"),
    "load_inbox": adopt.Load("inbox", key="agent", shape="list"),           # nodes/{agent}/inbox.json
    "save_inbox": adopt.Save("inbox", key="agent", shape="list"),
}

AGENT = {
    "join_session": adopt.Atomic("session", key="sid"),   # load, add a role, save: one lock around both
    "read_new": adopt.Atomic("inbox", key="agent"),       # each message read once
}

adopt.install_when_imported("plan_core.state", STATE)
adopt.install_when_imported("plan_core.agent", AGENT)
