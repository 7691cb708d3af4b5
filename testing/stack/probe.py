#!/usr/bin/env python3
"""Self-checks for the local test stack (Python 3 standard library only).

    probe.py clamd-scan     (--tcp HOST:PORT | --unix PATH) FILE|-
    probe.py clamd-selftest --tcp HOST:PORT --unix PATH
    probe.py notify-arn     --endpoint URL --access-key K --secret-key S --region R --target-id ID
    probe.py events-check   --env <stack>/stack.env

clamd-selftest: EICAR and the BucketAV test marker are detected, clean data is
OK, over TCP and the unix socket.
notify-arn: prints the first queue ARN for the target that MinIO accepts in a
PutBucketNotificationConfiguration (on a temporary bucket, removed afterwards).
events-check: end-to-end: declares the exchange (with MinIO's flags), a queue
and binding through the RabbitMQ management API, uploads an object and waits for
MinIO's event on the queue; removes everything it created.
"""

import argparse
import base64
import datetime
import hashlib
import hmac
import http.client
import json
import os
import socket
import struct
import sys
import time
import urllib.parse

# Split so that this file itself is no EICAR file for real scanners.
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
MARKER = b"BUCKET-AV-SCANNER-TEST-MARKER-" + b"7f3c9a"
EICAR_NAME = "Eicar-Test-Signature.UNOFFICIAL"
MARKER_NAME = "BucketAV.Test.Marker.UNOFFICIAL"


# --------------------------------------------------------------- clamd ----

def clamd_connect(tcp=None, unix=None, timeout=30):
    if unix:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(unix)
        return s
    host, port = tcp.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=timeout)


def clamd_instream(data, tcp=None, unix=None, chunk=64 * 1024):
    with clamd_connect(tcp, unix) as s:
        s.sendall(b"zINSTREAM\0")
        for i in range(0, len(data), chunk):
            part = data[i:i + chunk]
            s.sendall(struct.pack(">I", len(part)) + part)
        s.sendall(struct.pack(">I", 0))
        reply = b""
        while not reply.endswith(b"\0"):
            got = s.recv(4096)
            if not got:
                break
            reply += got
    return reply.rstrip(b"\0").decode()


def cmd_clamd_scan(a):
    data = sys.stdin.buffer.read() if a.file == "-" else open(a.file, "rb").read()
    print(clamd_instream(data, a.tcp, a.unix))


def cmd_clamd_selftest(a):
    filler = os.urandom(4096)
    cases = [
        ("EICAR (68 bytes)", EICAR, f"stream: {EICAR_NAME} FOUND"),
        ("marker inside other bytes", filler + MARKER + filler[:1000], f"stream: {MARKER_NAME} FOUND"),
        ("clean bytes", filler, "stream: OK"),
    ]
    failed = False
    for transport, kw in (("tcp", {"tcp": a.tcp}), ("unix", {"unix": a.unix})):
        for name, data, want in cases:
            got = clamd_instream(data, **kw)
            if got != want:
                failed = True
                print(f"clamd {transport}: {name}: expected {want!r}, got {got!r}", file=sys.stderr)
    sys.exit(1 if failed else 0)


# ------------------------------------------------------- S3 (SigV4) -------

def _q(s):
    return urllib.parse.quote(s, safe="-_.~")


def s3_request(endpoint, access, secret, region, method, path, query="", body=b"", headers=None):
    u = urllib.parse.urlsplit(endpoint)
    now = datetime.datetime.now(datetime.timezone.utc)
    amzdate = now.strftime("%Y%m%dT%H%M%SZ")
    date = amzdate[:8]
    payload = hashlib.sha256(body).hexdigest()
    hdrs = {"host": u.netloc, "x-amz-date": amzdate, "x-amz-content-sha256": payload}
    for k, v in (headers or {}).items():
        hdrs[k.lower()] = v
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    cquery = "&".join(f"{_q(k)}={_q(v)}" for k, v in sorted(pairs))
    signed = sorted(hdrs)
    creq = "\n".join([
        method,
        urllib.parse.quote(path, safe="/-_.~"),
        cquery,
        "".join(f"{k}:{hdrs[k].strip()}\n" for k in signed),
        ";".join(signed),
        payload,
    ])
    scope = f"{date}/{region}/s3/aws4_request"
    sts = "\n".join(["AWS4-HMAC-SHA256", amzdate, scope, hashlib.sha256(creq.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (date, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
    hdrs["authorization"] = (f"AWS4-HMAC-SHA256 Credential={access}/{scope}, "
                             f"SignedHeaders={';'.join(signed)}, Signature={sig}")
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    target = urllib.parse.quote(path, safe="/-_.~") + (f"?{query}" if query else "")
    conn.request(method, target, body=body, headers=hdrs)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def notification_xml(arn, events=("s3:ObjectCreated:Put",)):
    ev = "".join(f"<Event>{e}</Event>" for e in events)
    return (f'<NotificationConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<QueueConfiguration><Id>bavs-probe</Id><Queue>{arn}</Queue>{ev}</QueueConfiguration>"
            f"</NotificationConfiguration>").encode()


def cmd_notify_arn(a):
    s3 = lambda *args, **kw: s3_request(a.endpoint, a.access_key, a.secret_key, a.region, *args, **kw)
    bucket = "bavs-probe-" + os.urandom(4).hex()
    st, body = s3("PUT", f"/{bucket}")
    if st != 200:
        sys.exit(f"create bucket {bucket}: HTTP {st} {body[:300]!r}")
    found = None
    try:
        tid = a.target_id
        candidates = []
        for t in (tid, tid.lower(), tid.upper()):
            for region in ("", a.region):
                arn = f"arn:minio:sqs:{region}:{t}:amqp"
                if arn not in candidates:
                    candidates.append(arn)
        for arn in candidates:
            st, body = s3("PUT", f"/{bucket}", "notification", notification_xml(arn))
            if st == 200:
                found = arn
                break
            print(f"  {arn}: HTTP {st} {body[:200]!r}", file=sys.stderr)
    finally:
        s3("DELETE", f"/{bucket}")
    if not found:
        sys.exit(1)
    print(found)


# ------------------------------------------------- end-to-end events ------

def load_env(path):
    env = {}
    for line in open(path):
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            env[k] = v
    return env


def mgmt(env, method, path, body=None):
    u = urllib.parse.urlsplit(env["BAVS_RABBITMQ_MANAGEMENT_URL"])
    auth = base64.b64encode(f"{env['BAVS_RABBITMQ_USER']}:{env['BAVS_RABBITMQ_PASSWORD']}".encode()).decode()
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers={"authorization": f"Basic {auth}",
                                                    "content-type": "application/json"})
    resp = conn.getresponse()
    out = resp.read()
    conn.close()
    if resp.status >= 300:
        raise RuntimeError(f"{method} {path}: HTTP {resp.status} {out[:300]!r}")
    return json.loads(out) if out else None


def cmd_events_check(a):
    env = load_env(a.env)
    s3 = lambda *args, **kw: s3_request(env["BAVS_S3_ENDPOINT"], env["BAVS_S3_ACCESS_KEY"],
                                        env["BAVS_S3_SECRET_KEY"], env["BAVS_S3_REGION"], *args, **kw)
    ex = env["BAVS_EXCHANGE"]
    exq = urllib.parse.quote(ex, safe="")
    queue = "bavs-events-check-" + os.urandom(3).hex()
    bucket = "bavs-events-check-" + os.urandom(3).hex()
    key = "dir/hello world.txt"
    # The exchange must be declared with exactly MinIO's flags (durable, not auto-deleted, not internal).
    mgmt(env, "PUT", f"/api/exchanges/%2f/{exq}",
         {"type": env["BAVS_EXCHANGE_TYPE"], "durable": True, "auto_delete": False, "internal": False, "arguments": {}})
    mgmt(env, "PUT", f"/api/queues/%2f/{queue}", {"durable": False, "auto_delete": False, "arguments": {}})
    try:
        mgmt(env, "POST", f"/api/bindings/%2f/e/{exq}/q/{queue}", {"routing_key": env["BAVS_ROUTING_KEY"]})
        st, body = s3("PUT", f"/{bucket}")
        assert st == 200, (st, body)
        st, body = s3("PUT", f"/{bucket}", "notification", notification_xml(env["BAVS_NOTIFY_ARN"]))
        assert st == 200, (st, body)
        st, body = s3("PUT", f"/{bucket}/{key}", body=MARKER)
        assert st == 200, (st, body)
        deadline = time.time() + 15
        msgs = []
        while time.time() < deadline and not msgs:
            msgs = mgmt(env, "POST", f"/api/queues/%2f/{queue}/get",
                        {"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"})
            if not msgs:
                time.sleep(0.3)
        if not msgs:
            sys.exit("no event arrived within 15 s")
        m = msgs[0]
        ev = json.loads(m["payload"])
        rec = ev["Records"][0]
        print(f"event: {ev['EventName']} Key={ev['Key']} s3.object.key={rec['s3']['object']['key']} "
              f"size={rec['s3']['object'].get('size')} routing_key={m['routing_key']} "
              f"delivery_mode={m['properties'].get('delivery_mode')} "
              f"content_type={m['properties'].get('content_type')} headers={m['properties'].get('headers')}")
    finally:
        s3("PUT", f"/{bucket}", "notification",
           b'<NotificationConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"></NotificationConfiguration>')
        s3("DELETE", f"/{bucket}/{key}")
        s3("DELETE", f"/{bucket}")
        mgmt(env, "DELETE", f"/api/queues/%2f/{queue}")
        mgmt(env, "DELETE", f"/api/exchanges/%2f/{exq}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("clamd-scan")
    g = c.add_mutually_exclusive_group(required=True)
    g.add_argument("--tcp")
    g.add_argument("--unix")
    c.add_argument("file")
    c.set_defaults(fn=cmd_clamd_scan)
    c = sub.add_parser("clamd-selftest")
    c.add_argument("--tcp", required=True)
    c.add_argument("--unix", required=True)
    c.set_defaults(fn=cmd_clamd_selftest)
    c = sub.add_parser("notify-arn")
    for o in ("--endpoint", "--access-key", "--secret-key", "--region", "--target-id"):
        c.add_argument(o, required=True)
    c.set_defaults(fn=cmd_notify_arn)
    c = sub.add_parser("events-check")
    c.add_argument("--env", required=True)
    c.set_defaults(fn=cmd_events_check)
    a = p.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
