"""Command-line tools beside the request path: they decide through the same gate the proxy does, but serve nothing.

`explain` (one request, offline), policy tests, lint, the route table and config generation live here. They import
the request path's modules; nothing on the request path imports them.
"""
