"""mTLS between node proxies: SPIFFE identities, the local CA, SSL contexts.

``identity`` (SPIFFE IDs), ``ca`` (CA files, workload certificates, renewal
timing, the CertStore), ``context`` (ssl.SSLContext for both sides, peer
identity, rotation), ``cli`` (``nodeproxy ca ...``).
"""
