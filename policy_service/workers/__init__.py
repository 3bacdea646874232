"""`serve --workers N`: N serve processes on one listen address, behind one supervisor.

A Python process decides checks on one core (the GIL), so a machine's other cores serve
through more processes. With ``--workers N`` above 1, ``serve`` checks everything first,
then supervises N copies of itself that each bind the same address (``SO_REUSEPORT``: the
kernel spreads connections over them):

    protocol    the supervisor-worker contract: the environment a worker starts with, the
                one line it reports on its channel (ready, with its /metrics port, or why not)
    worker      the worker's side: that report, stopping when the supervisor is gone, and
                refusing in-process rate limits that N processes would each count apart
    supervisor  starting, watching, restarting (``backoff``) and stopping the workers,
                and forwarding SIGTERM, SIGINT and SIGHUP to them
    scrape      the one /metrics: every worker's registry fetched per scrape and merged
                (``merge``), plus the supervisor's own series

The audit stream stays one stream: workers append to the same file (or share stdout), and
lines too long to be written whole are serialized with a record lock the supervisor hands
down (``telemetry.audit.SharedFileSink``).
"""
