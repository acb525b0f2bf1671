"""Operating the service: the ``memeserve`` command line (cli), draining before a stop,
importing into the library, and the tiny random GLM-4.xV checkpoint for tests.
"""
