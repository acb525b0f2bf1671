"""Asynchronous jobs, the framework-free half: no Ray, no HTTP framework.

* :mod:`serve_app.jobs.store` — the durable job store (memory, SQLite, redis): jobs,
  their items leased to workers, results and callback bookkeeping.
* :mod:`serve_app.jobs.signing` — the ``x-memeserve-signature`` HMAC of callbacks, with
  the receiver's check.
* :mod:`serve_app.jobs.callbacks` — the callback-URL allowlist, retry backoff and one
  signed delivery.

Import the submodules; this package imports nothing, so using the store does not load
an HTTP client.
"""
