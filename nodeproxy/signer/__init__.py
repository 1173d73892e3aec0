"""The certificate signer: the only process that holds the mesh CA key.

Node proxies hold just the CA certificate. To get a certificate a node proxy
sends certificate signing requests with its projected service-account token;
the signer asks the Kubernetes API who that token belongs to (TokenReview),
which node its pod runs on, and which service accounts have a pod on that node
right now, and signs only those identities (what istiod checks for ztunnel).

``protocol`` (the JSON wire format both sides share), ``authorize`` (pure:
token review -> caller; caller + pods -> what may be signed), ``kubeapi``
(TokenReview and pod reads over the API), ``service`` (one signing request,
start to finish), ``server`` (the HTTPS shell) and ``cli`` (``nodeproxy
signer``). See docs/security.md and docs/kubernetes.md.
"""
