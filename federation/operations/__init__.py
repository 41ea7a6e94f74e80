"""Operating a federation: retention (``prune``), verified backups (``backup``) and health checks
(``doctor``).
"""
