"""Adopting the shim on ``seed_core.core``: one declaration per persistence function, one call.

Import this module before anything imports ``seed_core.core`` (the MCP
server's first line, say): every function declared below then runs under its
document's lock, through the rollout phase of the fleet's live flag, with the
database written and compared beside the files.
"""

from federation import adopt

DECLARATIONS = {
    "load_polls": adopt.Load("polls", into="active_polls"),
    "save_polls": adopt.Save("polls", source="active_polls"),
    "load_context": adopt.Load("context", key="agent"),
    "save_context": adopt.Save("context", key="agent"),
    "send": adopt.Save("message", key="recipient"),
    "check_inbox": adopt.Claim("inbox", key="agent"),
}

adopt.install_when_imported("seed_core.core", DECLARATIONS)
