"""Moving state between the two sides: both read as the same ten tables of rows (``rows``), the
migration (``migrate``), the consistency report (``report``), repair (``sync``) and the phase-4 archive
of the legacy files (``archive``).  The CLI commands are thin over these.
"""
