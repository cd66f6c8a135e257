"""The running service and the command line: the only package that wires config, storage and cxrmodel."""
