#!/usr/bin/env python3
"""Register N instances on a chora Manifest (stdlib only, loopback, keep-alive).

  register_many.py PORT [N=10000] [CONNS=4] [SERVICES=N]

POSTs /v1/services N times, instance i under the name mem-(i % SERVICES) (so by
default N services of one instance each; SERVICES=1000 gives 1,000 services of 10
instances), each with one interface and a small metadata document, spread over CONNS
keep-alive connections, then checks GET /v1/health reports services_registered == N.
Prints one line: "registered=N live=N seconds=S rate=R/s".
"""
import http.client
import json
import sys
import threading
import time


def worker(port, indices, services, errors):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    hdrs = {"Content-Type": "application/json"}
    for i in indices:
        body = json.dumps({
            "name": f"mem-{i % services}", "version": "1.0.0",
            "interfaces": {"REST": f"http://127.0.0.1:{20000 + i % 40000}"},
            "metadata": {"description": f"benchmark instance {i}",
                         "tags": ["bench"], "environment": "bench"},
        })
        c.request("POST", "/v1/services", body=body, headers=hdrs)
        r = c.getresponse()
        payload = r.read()
        if r.status != 201:
            errors.append(f"POST mem-{i} -> {r.status} {payload[:200]!r}")
            return
    c.close()


def main():
    port = int(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
    conns = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    services = int(sys.argv[4]) if len(sys.argv) > 4 else n
    errors = []
    t0 = time.time()
    threads = [threading.Thread(target=worker, args=(port, range(k, n, conns), services, errors))
               for k in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.time() - t0
    if errors:
        raise SystemExit("register_many: " + "; ".join(errors[:5]))
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/v1/health")
    live = json.loads(c.getresponse().read())["services_registered"]
    print(f"registered={n} services={services} live={live} seconds={dt:.2f} rate={n / dt:.0f}/s")
    if live != n:
        raise SystemExit(f"register_many: expected {n} live, health says {live}")


if __name__ == "__main__":
    main()
