"""The applications over the library: the MCP server agents talk to (``mcp_server``), the web dashboard
and ``/metrics`` (the ``dashboard`` package: data, metrics, app and its ``static/`` page), and the
stop-signal handling they share (``signals``).  The command line is ``federation.cli``.
"""
