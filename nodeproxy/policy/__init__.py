"""Authorization policy: pure, ordered allow/deny rules over SPIFFE identities.

``parse_policy(mapping)`` builds an immutable ``Policy`` at config load;
``Policy.decide(source, service, method, path)`` answers per request.
"""

from nodeproxy.policy.model import Action, Decision, Denied, Policy, Rule, normalize_path
from nodeproxy.policy.parse import parse_identity_pattern, parse_policy, parse_service_pattern

__all__ = [
    "Action",
    "Decision",
    "Denied",
    "Policy",
    "Rule",
    "normalize_path",
    "parse_identity_pattern",
    "parse_policy",
    "parse_service_pattern",
]
