"""The applications over the library: the MCP server agents talk to (``mcp_server``), the web dashboard
and ``/metrics`` (``dashboard``, with ``dashboard_static/``), and the stop-signal handling they share
(``signals``).  The command line is ``federation.cli``.
"""
