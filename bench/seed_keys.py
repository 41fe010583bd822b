#!/usr/bin/env python3
"""Adds stored keys to a Levee management store (SQLite), for bench/keys.sh.

    seed_keys.py DATA_DIR/management.sqlite3 TOTAL [SECRETS_FILE [SAMPLE]]

The store must hold exactly one key, made through the admin API (`POST /api/v1/keys`) with
its consumer and team: it is the template. This adds TOTAL - 1 keys like it, in one
transaction, as the API would have written them one by one: each its own random secret
(`lv_` and 64 hex digits, thrown away: only the template's secret is ever sent), its
`sha256:` digest, a body with the template's fields and a fresh id, prefix and created_at,
its own version; spread over consumers of 100 keys each (`bench-c<N>`, in the template's
team). When SECRETS_FILE is given, it gets the secrets of SAMPLE (default 1) of the keys added,
one per line: first the last key added (the highest version, so a gateway that accepts it
has loaded every row), then keys picked at random among the others. The store's version counter (`levee_mgmt_meta.version`) ends at the last version
written, so a gateway started on it loads every row at start.

Levee must not be running on the store meanwhile.
"""

import hashlib
import json
import os
import random
import sqlite3
import sys
import time

KEYS_PER_CONSUMER = 100


def compact(body: dict) -> str:
    """JSON as the API stores it (serde_json: sorted keys, no spaces)."""
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


def main() -> None:
    if len(sys.argv) not in (3, 4, 5):
        sys.exit(__doc__)
    path, total = sys.argv[1], int(sys.argv[2])
    if total < 1:
        sys.exit("TOTAL must be at least 1")
    db = sqlite3.connect(path)
    keys = db.execute(
        "SELECT id, team, owner, body FROM levee_objects WHERE kind = 'key' AND deleted = 0"
    ).fetchall()
    if len(keys) != 1:
        sys.exit(f"{path}: expected exactly one key (the template), found {len(keys)}")
    _, team, owner, key_body = keys[0]
    template = json.loads(key_body)
    row = db.execute(
        "SELECT body FROM levee_objects WHERE kind = 'consumer' AND id = ?", (owner,)
    ).fetchone()
    if row is None:
        sys.exit(f"{path}: no consumer row for the template key's consumer {owner!r}")
    consumer_template = json.loads(row[0])

    created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (version,) = db.execute("SELECT version FROM levee_mgmt_meta WHERE id = 1").fetchone()
    objects = []
    secrets = []
    extra = total - 1
    consumers = (extra + KEYS_PER_CONSUMER - 1) // KEYS_PER_CONSUMER
    for c in range(consumers):
        version += 1
        name = f"bench-c{c}"
        body = dict(consumer_template, name=name, team=team, created_at=created_at)
        objects.append(("consumer", name, team, None, None, compact(body), version))
    for i in range(extra):
        version += 1
        secret = "lv_" + os.urandom(32).hex()
        key_id = "key_" + os.urandom(8).hex()
        consumer = f"bench-c{i // KEYS_PER_CONSUMER}"
        body = dict(
            template,
            id=key_id,
            name=f"bench-{i}",
            consumer=consumer,
            team=team,
            prefix=secret[:8] + "...",
            created_at=created_at,
        )
        digest = "sha256:" + hashlib.sha256(secret.encode()).hexdigest()
        secrets.append(secret)
        objects.append(("key", key_id, team, consumer, digest, compact(body), version))

    with db:
        db.executemany(
            "INSERT INTO levee_objects (kind, id, team, owner, digest, body, deleted, version)"
            " VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
            objects,
        )
        db.execute("UPDATE levee_mgmt_meta SET version = ? WHERE id = 1", (version,))
    (count,) = db.execute(
        "SELECT COUNT(*) FROM levee_objects WHERE kind = 'key' AND deleted = 0"
    ).fetchone()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    if len(sys.argv) >= 4 and secrets:
        sample = int(sys.argv[4]) if len(sys.argv) == 5 else 1
        others = random.sample(secrets[:-1], max(0, min(sample - 1, len(secrets) - 1)))
        with open(sys.argv[3], "w") as out:
            out.write("".join(s + "\n" for s in [secrets[-1]] + others))
    print(f"{path}: {count} keys, {consumers + 1} consumers, version {version}")


if __name__ == "__main__":
    main()
