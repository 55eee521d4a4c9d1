"""The container's health check: healthy when this process's /healthz answers 200.

Slack in HTTP mode serves /healthz on ``PORT`` (default 3000) beside /slack/events;
the Discord bot serves it on ``PARLEY_OPS_PORT``. Either answering is enough.
Standard library only (the image has no curl), and never through a proxy.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def main() -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    ports = [os.environ.get("PARLEY_OPS_PORT"), os.environ.get("PORT") or "3000"]
    for port in dict.fromkeys(p for p in ports if p):
        try:
            with opener.open(f"http://127.0.0.1:{port}/healthz", timeout=3) as r:
                if r.status == 200:
                    return 0
        except OSError:
            continue
    return 1


if __name__ == "__main__":
    sys.exit(main())
