"""The ``policy-service`` command line: ``main`` builds the parser from one module per group
of commands (``serving``, ``authoring``, ``signing``, ``dev``), with the flags they share in
``flags``."""
