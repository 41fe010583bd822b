#!/usr/bin/env python3
"""Writes a Levee config with many routes, upstreams and consumers, for bench/config.sh and
for trying `levee check` at scale.

    bench/gen_config.py ROUTES [--broken-last] [--listen PORT] [--admin PORT] > levee.yaml

Routes mix the shapes a multi-tenant gateway has: a host per tenant with prefixes, exact
paths, `{param}` templates, method and header matches. One upstream per ten routes, one
consumer per hundred routes (with an API key digest), so every section grows with the file.
With --broken-last the last route names an upstream that does not exist. The listener and
the admin API bind 127.0.0.1 on the ports given (0, any free port, by default).
"""
import sys

def main() -> None:
    args = sys.argv[1:]
    if not args or not args[0].isdigit():
        sys.exit(__doc__)
    routes = int(args[0])
    broken = "--broken-last" in args

    def port(flag: str) -> int:
        if flag in args and args.index(flag) + 1 < len(args):
            return int(args[args.index(flag) + 1])
        return 0

    listen, admin = port("--listen"), port("--admin")
    upstreams = max(1, routes // 10)
    consumers = max(1, routes // 100)
    out = sys.stdout
    out.write(f"listeners:\n  - name: public\n    bind: 127.0.0.1:{listen}\nadmin:\n  bind: 127.0.0.1:{admin}\n")
    out.write("upstreams:\n")
    for u in range(upstreams):
        port = 20000 + u % 40000
        out.write(f"  svc-{u}:\n    targets: [\"127.0.0.1:{port}\"]\n")
    out.write("consumers:\n")
    for c in range(consumers):
        digest = f"{c:064x}"
        out.write(f"  - name: tenant-{c}\n    api_keys: [\"sha256:{digest}\"]\n")
    out.write("routes:\n")
    for r in range(routes):
        upstream = f"svc-{r % upstreams}"
        if broken and r == routes - 1:
            upstream = "no-such-upstream"
        tenant = r // 10
        shape = r % 5
        if shape == 0:
            match = f"{{ host: t{tenant}.example.com, path_prefix: /api/v{r % 3} }}"
        elif shape == 1:
            match = f"{{ host: t{tenant}.example.com, path: /health/{r} }}"
        elif shape == 2:
            match = f"{{ host: t{tenant}.example.com, path: \"/users/{{id}}/orders/{r}\", methods: [GET, POST] }}"
        elif shape == 3:
            match = f"{{ path_prefix: /tenants/{tenant}/items/{r} }}"
        else:
            match = f"{{ host: \"*.t{tenant}.example.com\", path_prefix: /, headers: {{ x-route: \"{r}\" }} }}"
        out.write(f"  - name: route-{r}\n    match: {match}\n    upstream: {upstream}\n")

if __name__ == "__main__":
    main()
