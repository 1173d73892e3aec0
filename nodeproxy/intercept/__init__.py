"""Transparent interception: pods reach the mesh without proxy settings (docs/interception.md).

rules.py     the node's redirect rules, rendered as text (nftables, or iptables-nft)
install.py   ``nodeproxy intercept install|uninstall``: applies or removes them
detect.py    the first bytes of a connection -> HTTP/1.x, TLS (with its SNI) or TCP
resolve.py   an original destination (ClusterIP:port or pod IP:port) -> a cluster
listener.py  the transparent listener: original destination, detection, dispatch
             (HTTP/1.x -> the pipeline; the rest -> nodeproxy.tunnel.carry_tcp, from app.py)
cli.py       the command's arguments -> rules
"""
