"""The one harness every benchmark and load test in :mod:`loadtest` runs on.

* :mod:`loadtest.harness.processes` — the /proc walker: descendants, liveness, zombies,
  Ray's processes, signalling and waiting for a set of processes to be gone;
* :mod:`loadtest.harness.service` — start a profile with ``memeserve run`` on a free
  port, wait for ``/readyz``, stop it (SIGINT, then escalation) leaving nothing behind;
* :mod:`loadtest.harness.inprocess` — a profile in this process's own Ray instance, with
  no dashboard (nothing else on the machine can deploy onto it), shut down after;
* :mod:`loadtest.harness.http` — the routes, shared httpx clients, posting a meme;
* :mod:`loadtest.harness.status` — reading and polling ``/v1/status``, replica counts;
* :mod:`loadtest.harness.load` — open-loop (Poisson) and closed-loop request drivers;
* :mod:`loadtest.harness.stats` — percentiles and latency summaries.

The seeded memes and their transforms stay in :mod:`loadtest.corpus` and
:mod:`loadtest.transforms`.
"""
