"""The web console (`cxrd console`): server-rendered pages for compliance officers, operations staff and
administrators, in its own process beside the daemon, on the same configuration, database and keys.

A room of daemon/ between daemon.cli and daemon.service: it uses storage/ and the Runtime, never the
command line. Roles are enforced on the server for every route (`access.requires_role`); every POST
carries a CSRF token (`csrf`); every response carries the security headers (`headers`).
"""
