"""The demo's parts: a development issuer, an echo upstream, and `scopegate demo` wiring them to the proxy.

Not stages of the request path, and not for production: they stand in for Logto and for an app, on loopback, so
the proxy can be tried (`./scripts/demo`) and tested against real servers. Nothing on the request path imports them.
"""
