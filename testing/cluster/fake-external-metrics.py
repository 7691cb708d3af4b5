#!/usr/bin/env python3
"""A minimal external metrics API server (external.metrics.k8s.io/v1beta1) for check.sh.

Serves every metric with one constant value over HTTPS on 127.0.0.1 and accepts only
clients whose certificate chains to the request-header (front-proxy) CA, i.e. the
kube-apiserver's aggregator. Standard library only.

    fake-external-metrics.py PORT CERT KEY FRONT_PROXY_CA VALUE
"""
import http.server
import json
import ssl
import sys
from datetime import datetime, timezone

GV = "external.metrics.k8s.io/v1beta1"


class Handler(http.server.BaseHTTPRequestHandler):
    value = "0"

    def _send(self, code, body):
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 (http.server API)
        path = self.path.split("?", 1)[0].rstrip("/")
        user = self.headers.get("X-Remote-User", "")
        sys.stderr.write(f"GET {self.path} user={user}\n")
        parts = path.split("/")
        if path == "/apis/" + GV:
            self._send(200, {
                "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": GV,
                "resources": [{"name": "*", "singularName": "", "namespaced": True,
                               "kind": "ExternalMetricValueList", "verbs": ["get"]}],
            })
        elif path.startswith(f"/apis/{GV}/namespaces/") and len(parts) == 7:
            now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            self._send(200, {
                "kind": "ExternalMetricValueList", "apiVersion": GV, "metadata": {},
                "items": [{"metricName": parts[6], "metricLabels": {}, "timestamp": now,
                           "value": self.value}],
            })
        else:
            self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                             "reason": "NotFound", "code": 404})

    def log_message(self, *args):
        pass


def main():
    port, cert, key, ca, value = sys.argv[1:6]
    Handler.value = value
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
