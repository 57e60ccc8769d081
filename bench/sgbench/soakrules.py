"""The rule sets the soak loads and reloads between, all on loopback ports chosen per run.

`RULES_A` is loaded at the start; `RULES_B` is the same policy written differently (routes that cannot overlap in
another order, block style, explicit defaults, scope lists spelled `{all: ...}` and reordered, claims reordered, one
route no request of the soak matches), so reloading it must change no answer; `RULES_BROKEN` must be refused by a
reload, and change nothing either. The auth settings make a rotation visible within a second (`jwks_refresh_seconds:
1`) and expiry exact (`leeway_seconds: 0`); the upstream timeout makes the slow-upstream case a 504.
"""

from __future__ import annotations

from string import Template

from .layout import AUDIENCE, LOOPBACK

UPSTREAM_TIMEOUT_SECONDS = 5  # the fault-slow route's upstream answers after SLOW_SECONDS: a 504, on purpose
SLOW_SECONDS = UPSTREAM_TIMEOUT_SECONDS + 3

_HEADER = Template("""\
# scopegate soak, rule set $NAME (written by bench/sgbench/soakplan.py)
listen: $LOOPBACK:$PROXY_PORT
admin_listen: $LOOPBACK:$ADMIN_PORT
upstream: http://$LOOPBACK:$UPSTREAM_PORT
upstream_timeout_seconds: $UPSTREAM_TIMEOUT
shutdown_grace_seconds: 5
log_level: info
auth:
  issuer: "$ISSUER"
  algorithms: [ES384, RS256]
  leeway_seconds: 0            # the expiring token turns 401 the second its exp passes
  jwks_refresh_seconds: 1      # a rotation is seen within a second
  jwks_refetch_cooldown_seconds: 1
""")

RULES_A = Template("""\
routes:
  - name: reports-read
    match: { path: "/api/reports/{report_id}", methods: [GET, HEAD] }
    resource: $API
    scopes: [read:report]
  - name: org-member-invite
    match: { path: "/orgs/{org_id}/members", methods: [POST] }
    organization: { from: path, name: org_id }
    scopes: [invite:member]
  - name: org-projects
    match: { path: "/api/orgs/{org_id}/projects/**" }
    resource: $API
    organization: { from: path, name: org_id }
    scopes: { any: [read:project, admin:project] }
  - name: org-settings
    match: { path: /api/settings, methods: [GET, PUT] }
    resource: $API
    organization: { from: header, name: X-Organization-Id }
    scopes: [manage:settings]
  - name: admin-only
    match: { path: "/admin/**" }
    resource: $API
    scopes: [manage:tenant]
    claims: { roles: admin, email_verified: true }
  - name: beta-audit
    match: { path: "/beta/**" }
    resource: $API
    scopes: [beta]
    mode: audit
  - name: fault-status
    match: { path: "/status/**" }
    resource: $API
  - name: fault-slow
    match: { path: "/slow/**" }
    resource: $API
  - name: fault-reset
    match: { path: "/reset/**" }
    resource: $API
  - name: public
    match: { path: "/public/**" }
    public: true
""")

# The same policy: routes that cannot overlap in another order, block style, explicit defaults, scope lists spelled
# as {all: ...} and reordered, claims reordered, and one route no request of the soak ever matches.
RULES_B = Template("""\
routes:
  - name: public
    match:
      path: /public/**
    public: true
  - name: fault-reset
    match: { path: "/reset/**" }
    resource: $API
    mode: enforce
  - name: fault-slow
    match: { path: "/slow/**" }
    resource: $API
  - name: fault-status
    match: { path: "/status/**" }
    resource: $API
  - name: beta-audit
    match: { path: "/beta/**" }
    resource: $API
    scopes: { all: [beta] }
    mode: audit
  - name: admin-only
    match:
      path: /admin/**
    resource: $API
    scopes: { all: [manage:tenant] }
    claims:
      email_verified: true
      roles: admin
  - name: soak-never-matched
    match: { path: "/never/{thing}" }
    resource: $API
    scopes: [never]
  - name: org-settings
    match: { path: /api/settings, methods: [PUT, GET] }
    resource: $API
    organization: { name: X-Organization-Id, from: header }
    scopes: { all: [manage:settings] }
  - name: org-projects
    match: { path: "/api/orgs/{org_id}/projects/**" }
    organization: { from: path, name: org_id }
    resource: $API
    scopes: { any: [admin:project, read:project] }
  - name: org-member-invite
    match: { methods: [POST], path: "/orgs/{org_id}/members" }
    organization: { from: path, name: org_id }
    scopes: { all: [invite:member] }
    mode: enforce
  - name: reports-read
    match: { path: "/api/reports/{report_id}", methods: [HEAD, GET] }
    resource: $API
    scopes: [read:report]
""")

# Refused by a reload (an unknown key and a duplicate route name): the rules in force must keep serving.
RULES_BROKEN = Template("""\
routes:
  - name: public
    match: { path: "/public/**" }
    public: true
    scope: [oops]
  - name: public
    match: { path: "/public2/**" }
    public: true
""")


def config_texts(*, proxy_port: int, admin_port: int, upstream_port: int, issuer: str) -> dict[str, str]:
    """The config files the soak switches between: "A" (loaded at start), "B" (the same policy), "broken"."""
    ports = {"PROXY_PORT": proxy_port, "ADMIN_PORT": admin_port, "UPSTREAM_PORT": upstream_port}
    settings = {"LOOPBACK": LOOPBACK, "UPSTREAM_TIMEOUT": UPSTREAM_TIMEOUT_SECONDS, "ISSUER": issuer, **ports}
    rules = {"A": RULES_A, "B": RULES_B, "broken": RULES_BROKEN}
    return {
        name: _HEADER.substitute(NAME=name, **settings) + text.substitute(API=AUDIENCE) for name, text in rules.items()
    }
