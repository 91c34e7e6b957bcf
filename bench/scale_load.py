#!/usr/bin/env python3
"""bench/scale_load.py: helpers of bench/scale.sh (standard library, plus the
`lz4` package for the record bodies, which progressd stores LZ4-compressed).

    redis-cli GET KEY | scale_load.py template OUT.json
        Reads one stored record (written through progressd's API) as
        redis-cli prints it and saves it as a template: its bytes (the body
        decompressed) with placeholders where the loaded copies differ (id,
        created time, expiry).

    redis-cli GET KEY | scale_load.py plain
        The same stored record with its body decompressed: the bytes
        PostgreSQL keeps for it.

    scale_load.py redis TEMPLATES.json PREFIX ID_PREFIX START END BASE_MS X_MS
        Writes to stdout, in the Redis protocol (for `redis-cli --pipe`), what
        progressd's own write script does for records START..END-1: the record
        key `{PREFIX}progress:{ID_PREFIX}{i}` (SET … PX, value in the stored
        format, the body LZ4-compressed as progressd compresses it), and its
        members in the listing indexes `{PREFIX}progressd:index`,
        `…:index:{status}` and `…:expiry`. Record i is created at BASE_MS - i
        (so record 0 is the newest) and expires at X_MS; its status (so its
        template) is STATUSES[i % 20].

    scale_load.py gone PREFIX ID_PREFIX COUNT STATUS CREATED_MS X_MS
        Index members (index, status set, expiry set at score X_MS, in the
        past) of COUNT records `{ID_PREFIX}{j}` whose keys do not exist: what
        records that expired leave behind until cleanup prunes them.

    scale_load.py unlink REDIS_URL PREFIX [--count-only]
        SCAN (COUNT 1000) for the keys under PREFIX and UNLINK them, 1000 per
        command; prints how many it found. With --count-only, only counts.

    scale_load.py sql TEMPLATES.json X_MS
        The templates (expiring at X_MS) as SQL VALUES rows for bench/scale.sh's INSERT … SELECT
        (the same bytes, so PostgreSQL's rows match Redis's values byte for byte).

Placeholders in a template: @ID@ (the id), @C@ (created ms, header), @X@
(expiry ms, header), @CREATED@ (created_at, RFC 3339 with ms), @EXPIRES@
(expires_at). Every other byte (other timestamps, stages, children,
metadata) is the template's.
"""

import base64
import json
import re
import socket
import sys
import time
import urllib.parse

# Record i has status STATUSES[i % 20]: 70 % completed, 20 % running,
# 5 % failed, 5 % pending.
STATUSES = ["completed"] * 14 + ["running"] * 4 + ["failed", "pending"]


def resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        elif isinstance(a, int):
            a = b"%d" % a
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def read_reply(f):
    line = f.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"*":
        return [read_reply(f) for _ in range(int(rest))]
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2]
    if kind in (b"+", b":"):
        return rest
    raise SystemExit(f"scale_load: Redis answered {line!r}")


def cmd_unlink(url, prefix, mode=""):
    u = urllib.parse.urlparse(url)
    s = socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379))
    f = s.makefile("rb")

    def call(*args):
        s.sendall(resp(*args))
        return read_reply(f)

    if u.password:
        call("AUTH", *([urllib.parse.unquote(u.username)] if u.username else []), urllib.parse.unquote(u.password))
    db = (u.path or "/").strip("/") or "0"
    call("SELECT", db)
    pattern = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in prefix) + "*"
    cursor, found = b"0", 0
    while True:
        cursor, keys = call("SCAN", cursor, "MATCH", pattern, "COUNT", "1000")
        found += len(keys)
        if keys and mode != "--count-only":
            call("UNLINK", *keys)
        if cursor == b"0":
            break
    print(found)


# What progressd's hot tier does with a record's body (src/store/redis/codec.rs,
# `with_redis_value`): from COMPRESS_FROM bytes on, `~`, the body's length
# (4 bytes, little-endian) and the body as one LZ4 block, when that is shorter.
COMPRESSED = b"~"
COMPRESS_FROM = 256


def lz4_block():
    try:
        import lz4.block
    except ImportError:
        raise SystemExit("scale_load: the lz4 package is missing (python3 -m pip install --user lz4)")
    return lz4.block


def redis_body(body):
    if len(body) < COMPRESS_FROM:
        return body
    packed = COMPRESSED + lz4_block().compress(body, store_size=True)
    return packed if len(packed) < len(body) else body


def iso(ms):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + ".%03dZ" % (ms % 1000)


def read_stored():
    """One Redis value as redis-cli prints it, on stdin: (header, body), the body decompressed."""
    raw = sys.stdin.buffer.read()
    if raw.endswith(b"\n"):  # redis-cli ends its output with a newline
        raw = raw[:-1]
    if not raw.startswith(b'{"v":'):
        raise SystemExit(f"scale_load: not a stored record: {raw[:80]!r}")
    head, body = raw.split(b"\n", 1)
    if body.startswith(COMPRESSED):
        body = lz4_block().decompress(body[1:])
    return head, body


def cmd_plain():
    head, body = read_stored()
    sys.stdout.buffer.write(head + b"\n" + body)


def cmd_template(out):
    head, body = read_stored()
    header, body = head.decode(), body.decode()
    meta = json.loads(header)
    rec = json.loads(body)
    header = re.sub(r'"x":\d+', '"x":@X@', header, count=1)
    header = re.sub(r'"c":\d+', '"c":@C@', header, count=1)
    for field, placeholder in (("id", "@ID@"), ("created_at", "@CREATED@"), ("expires_at", "@EXPIRES@")):
        old = '"%s":%s' % (field, json.dumps(rec[field]))
        if body.count(old) != 1:
            raise SystemExit(f"scale_load: {old} is not once in the template body")
        body = body.replace(old, '"%s":"%s"' % (field, placeholder))
    with open(out, "a") as f:  # one template per line
        f.write(json.dumps({"status": rec["status"], "version": meta["v"], "updated_at": rec["updated_at"],
                            "template": header + "\n" + body}) + "\n")


def load_templates(path):
    templates = [json.loads(line) for line in open(path) if line.strip()]
    by_status = {t["status"]: t for t in templates}
    missing = set(STATUSES) - set(by_status)
    if missing:
        raise SystemExit(f"scale_load: no template for {sorted(missing)}")
    return by_status


def cmd_redis(templates, prefix, id_prefix, start, end, base_ms, x_ms):
    by_status = load_templates(templates)
    start, end, base_ms, x_ms = int(start), int(end), int(base_ms), int(x_ms)
    parts = {}
    for status, t in by_status.items():
        tpl = t["template"].replace("@X@", str(x_ms)).replace("@EXPIRES@", iso(x_ms))
        # Split at the per-record placeholders, keeping their order.
        pieces = re.split(r"(@ID@|@C@|@CREATED@)", tpl)
        parts[status] = pieces
    index = (prefix + "progressd:index").encode()
    expiry = (prefix + "progressd:expiry").encode()
    status_key = {s: (prefix + "progressd:index:" + s).encode() for s in by_status}
    key_prefix = (prefix + "progress:" + id_prefix).encode()
    out = sys.stdout.buffer
    buf = []
    now_ms = int(time.time() * 1000)
    ttl_ms = max(1, x_ms - now_ms)
    iso_cache_s, iso_cache = None, ""
    x_b = b"%d" % x_ms
    for i in range(start, end):
        status = STATUSES[i % 20]
        rid = id_prefix + str(i)
        c = base_ms - i
        sec = c // 1000
        if sec != iso_cache_s:
            iso_cache_s, iso_cache = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        subst = {"@ID@": rid, "@C@": str(c), "@CREATED@": iso_cache + ".%03dZ" % (c % 1000)}
        header, body = "".join(subst.get(p, p) for p in parts[status]).encode().split(b"\n", 1)
        value = header + b"\n" + redis_body(body)
        member = b"%015d:%s" % (c, rid.encode())
        key = key_prefix + str(i).encode()
        buf.append(b"*5\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$2\r\nPX\r\n$%d\r\n%d\r\n"
                   % (len(key), key, len(value), value, len(str(ttl_ms)), ttl_ms))
        for zkey, score in ((index, b"0"), (status_key[status], b"0"), (expiry, x_b)):
            buf.append(b"*4\r\n$4\r\nZADD\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
                       % (len(zkey), zkey, len(score), score, len(member), member))
        if len(buf) >= 4000:
            out.write(b"".join(buf))
            buf = []
    out.write(b"".join(buf))
    out.flush()


def cmd_gone(prefix, id_prefix, count, status, created_ms, x_ms):
    count, created_ms, x_ms = int(count), int(created_ms), int(x_ms)
    out = sys.stdout.buffer
    for j in range(count):
        member = "%015d:%s%d" % (created_ms - j, id_prefix, j)
        out.write(resp("ZADD", prefix + "progressd:index", "0", member))
        out.write(resp("ZADD", prefix + "progressd:index:" + status, "0", member))
        out.write(resp("ZADD", prefix + "progressd:expiry", str(x_ms), member))
    out.flush()


def cmd_sql(templates, x_ms):
    by_status = load_templates(templates)
    x_ms = int(x_ms)
    rows = []
    for status, t in sorted(by_status.items()):
        tpl = t["template"].replace("@X@", str(x_ms)).replace("@EXPIRES@", iso(x_ms)).replace("'", "''")
        rows.append("('%s', %d, '%s'::timestamptz, '%s')" % (status, t["version"], t["updated_at"], tpl))
    print(",\n".join(rows))


if __name__ == "__main__":
    commands = {"template": cmd_template, "redis": cmd_redis, "gone": cmd_gone, "sql": cmd_sql, "unlink": cmd_unlink,
                "plain": cmd_plain}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        raise SystemExit(__doc__)
    commands[sys.argv[1]](*sys.argv[2:])
