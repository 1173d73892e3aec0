"""The embedded demo: the seed's birthday greeter (greeter.py), its built-in config and banner
(config.py), and `nodeproxy demo` putting greeters, proxy and admin in one nursery (runner.py)."""
