-- bench/gateway.sh: POST /analyze with a small JSON body (the path comes from the URL).
wrk.method = "POST"
wrk.body = '{"text":"the quick brown fox jumps over the lazy dog"}'
wrk.headers["Content-Type"] = "application/json"

-- one machine-readable line for bench/gateway.sh
function done(summary, latency, requests)
  local e = summary.errors
  local sock = e.connect + e.read + e.write + e.timeout
  io.write(string.format(
    "RESULT requests=%d rps=%.1f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f non2xx=%d sock_errors=%d (connect=%d read=%d write=%d timeout=%d)\n",
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, e.status, sock, e.connect, e.read, e.write, e.timeout))
end
