"""Moved to ``nodeproxy/stats/``; kept only until app.py and workers/supervisor.py import
from there (they are being edited elsewhere right now). Do not import from here."""

from nodeproxy.stats.names import BUILD_INFO as BUILD_INFO
from nodeproxy.stats.names import DOWNSTREAM_CONNECTIONS_TOTAL as DOWNSTREAM_CONNECTIONS_TOTAL
from nodeproxy.stats.names import REQUESTS as REQUESTS
from nodeproxy.stats.registry import labels as labels
