"""The scopegate benchmark harness behind `./bench/run`.

It exists to answer one question repeatably: how does scopegate's data path compare with Envoy (and with plain
proxies, and a naive aiohttp+pyjwt proxy) on this machine, in throughput, latency and CPU per request? Every target
is started fresh for each measured run, against the same nginx upstream and the same issuer, loaded by wrk on
loopback, over interleaved rounds; the medians land in bench/results/.
"""
