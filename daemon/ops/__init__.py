"""Running the service in a hospital: logs, HTTP health and Prometheus metrics, systemd, the memory
allocator setting, and backup/restore.
"""
