"""Metrics, apart from the admin server that shows them.

``registry.py`` holds the counters, gauges and histograms, ``names.py`` the
metric names and HELP texts, ``prometheus.py`` the text exposition format.
"""
