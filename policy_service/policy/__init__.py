"""The compiled policy every phase of a check reads: built once from a bundle, then immutable.

Upstreams and their rules (``model``), the call targets rules and limits match
(``targets``), CEL conditions (``conditions``), webhook URL rules (``webhooks``), rates and
compiled limits (``rates``, ``limits``). It sits below the request path: the loader in
``bundles`` builds it, the phases read it, and nothing here imports either.
"""
