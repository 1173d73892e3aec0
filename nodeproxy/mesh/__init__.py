"""The mesh: node-to-node mTLS hops, workload identities and authorization.

``state`` (the per-process ``Mesh``: certificates, source identities, peers,
policy), ``outbound`` (the outbound listener's mesh step: same node or
another node, early policy, the wire headers), ``inbound`` (the inbound
listener's pipeline: destination check, policy, forward to a local pod).
The mTLS listener itself is ``server/inbound.py``. See docs/security.md.
"""
