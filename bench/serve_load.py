"""The web demo under load: N concurrent API clients on loopback against `var-engine serve` in its own process.

Each level sends the same fixed list of requests (request i: class i % classes, `--images` images, seed i,
cfg 1.5) from N client threads; counts served, refused (full queue) and failed requests, and the p50/p95
latency of the served ones; throughput under load is compared with the same requests run back to back
through the library in one process (no server), with the same torch thread count. Two kinds of client:
`gradio` (gradio_client.predict) and `http` (the REST API: post, read the event stream, download the
PNGs; far less client-side CPU). Writes bench/results/<out-name>.{json,md}.

Usage: python -m bench.serve_load [--clients 1,4,16] [--requests 32] [--images 4] [--queue-size 8] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.common import markdown_table, parse_args, write_results

DEFAULTS = [3, 1, 0, 1.5, 512, 0.96, False, False, 8, 4, 0, "off", 4]  # /generate's 13 inputs (default model)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, args: argparse.Namespace) -> subprocess.Popen:
    """`var-engine serve` in a child process; returns once it answers HTTP."""
    import httpx

    cmd = [sys.executable, "-m", "var_engine.cli", "serve", "--port", str(port), "--threads", str(args.threads or 1),
           "--queue-size", str(args.queue_size), "--concurrency", str(args.concurrency),
           "--max-images", str(max(16, args.images)), "--no-preview"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the server did not answer within 180 s")


def requests_list(n: int, images: int, classes: int) -> list[tuple[int, int, int, float]]:
    return [(i % classes, images, i, 1.5) for i in range(n)]


class HttpClient:
    """The REST API without gradio_client: POST the inputs, read the event stream, download the PNGs."""

    def __init__(self, url: str):
        import httpx

        self.base, self.http = url.rstrip("/"), httpx.Client(timeout=300)

    def predict(self, *inputs) -> list:
        r = self.http.post(f"{self.base}/gradio_api/call/generate", json={"data": list(inputs)})
        if r.status_code != 200:  # 503 with the reason when the queue is full
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
        event, data = None, None
        with self.http.stream("GET", f"{self.base}/gradio_api/call/generate/{r.json()['event_id']}") as s:
            for line in s.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data = line[5:].strip()
        if event != "complete":
            raise RuntimeError(json.loads(data or "{}").get("error") or f"event {event}: {data}")
        gallery = json.loads(data)[0]
        for item in gallery:
            self.http.get(item["image"]["url"]).raise_for_status()
        return gallery


def run_level(url: str, clients: int, requests: list[tuple], kind: str = "gradio") -> dict:
    """Send `requests` from `clients` threads (each with its own API client: gradio_client, or plain HTTP with
    kind='http'); outcome and latency of each."""
    from gradio_client import Client

    pending = list(enumerate(requests))
    lock = threading.Lock()
    outcomes: list[tuple[str, float, str]] = []

    def worker() -> None:
        client = Client(url, verbose=False) if kind == "gradio" else HttpClient(url)
        while True:
            with lock:
                if not pending:
                    return
                _, req = pending.pop(0)
            t0 = time.perf_counter()
            try:
                gallery = client.predict(*req, *DEFAULTS[len(req):]) if kind == "http" else \
                    client.predict(*req, api_name="/generate")[0]
                kind_ = "served" if len(gallery) == req[1] else "failed"
                detail = ""
            except Exception as e:  # noqa: BLE001  (counted, with its message)
                kind_ = "refused" if "queue is full" in str(e).lower() else "failed"
                detail = str(e)[:200]
            with lock:
                outcomes.append((kind_, time.perf_counter() - t0, detail))

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    latencies = sorted(s for k, s, _ in outcomes if k == "served")
    served = len(latencies)

    def pct(q: float) -> float | None:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else None

    return {"client": kind, "clients": clients, "requests": len(requests), "served": served,
            "refused": sum(k == "refused" for k, _, _ in outcomes),
            "failed": sum(k == "failed" for k, _, _ in outcomes),
            "p50_s": pct(0.5), "p95_s": pct(0.95), "mean_s": statistics.fmean(latencies) if latencies else None,
            "wall_s": wall, "served_per_s": served / wall,
            "errors": sorted({d for k, _, d in outcomes if k == "failed"})[:5]}


def back_to_back(requests: list[tuple], threads: int) -> dict:
    """The same requests through the library, one after another in this process."""
    from var_engine import Pipeline
    from var_engine.devices import set_threads

    set_threads(threads or 1)
    pipe = Pipeline.from_pretrained()
    pipe.generate([0], seed=0)  # warm-up
    t0 = time.perf_counter()
    for label, images, seed, cfg in requests:
        pipe.generate([label] * images, seed=seed, cfg=cfg)
    wall = time.perf_counter() - t0
    return {"requests": len(requests), "wall_s": wall, "served_per_s": len(requests) / wall,
            "per_request_s": wall / len(requests)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", default="1,4,16", help="comma-separated numbers of concurrent clients")
    p.add_argument("--requests", type=int, default=32, help="requests per level")
    p.add_argument("--images", type=int, default=4, help="images per request")
    p.add_argument("--queue-size", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--client", default="gradio,http",
                   help="client kinds: gradio (gradio_client.predict) and/or http (REST, event stream, PNG downloads)")
    p.add_argument("--out-name", default="serve_load")
    p.add_argument("--out-dir", default=None)
    args = parse_args(p, argv)
    levels = [int(c) for c in args.clients.split(",") if c.strip()]
    requests = requests_list(args.requests, args.images, 10)
    baseline = back_to_back(requests, args.threads)
    port = free_port()
    server = start_server(port, args)
    url = f"http://127.0.0.1:{port}/"
    try:
        run_level(url, 1, requests[:2])  # warm-up (model, kernels, client connections)
        rows = [run_level(url, c, requests, kind) for kind in args.client.split(",") for c in levels]
    finally:
        server.terminate()
        server.wait(timeout=30)
    for r in rows:
        r["vs_back_to_back"] = r["served_per_s"] / baseline["served_per_s"]
    table = markdown_table(rows, ["client", "clients", "requests", "served", "refused", "failed", "p50_s", "p95_s",
                                  "wall_s", "served_per_s", "vs_back_to_back"])
    table += (f"\n\nBack to back in one process (library, no server): {baseline['served_per_s']:.3g} requests/s "
              f"({baseline['per_request_s']:.3g} s per request of {args.images} images); server: queue size "
              f"{args.queue_size}, concurrency {args.concurrency}, {args.threads or 1} torch thread(s).")
    write_results(args.out_name, {"settings": {k: v for k, v in vars(args).items()}, "back_to_back": baseline,
                                  "levels": rows}, table, Path(args.out_dir) if args.out_dir else None)


if __name__ == "__main__":
    main()
