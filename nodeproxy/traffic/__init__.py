"""Per-process traffic state (balancers, outlier detectors, breakers) and its reports.

``state.py`` holds one ``ClusterTraffic`` per cluster for the whole process,
``attempt.py`` is how the pipeline reports what happened to a request, and
``explain.py`` answers the admin ``/explain`` page from the same state.
"""
