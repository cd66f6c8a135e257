"""The `cxrd` command line: the entry point (`main`), shared arguments, and one module per command group.

Commands translate arguments into calls of the service, stages and operations below them and print
results; nothing below imports from here.
"""
