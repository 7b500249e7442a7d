"""Swap latency as the app delivers it, against the depth of its frame queue (`AppConfig.queue_chunks`).

The engine's swap latency (`fashionchameleon bench`) stops at the first frame generated in the new garment. A
viewer also waits for the frames already queued ahead of the swap, so the latency a user sees is set mostly by
the queue depth. This streams the shipped model to in-process loopback WebRTC viewers (127.0.0.1, no ICE servers),
clicks garments at jittered intervals, and reports per setting: the server's click-to-delivered-frame latency of
every swap, the repeated frames (underruns) and the delivered fps.

    python benchmarks/app_swap_latency.py --queue-chunks 2,1.5,1.25 --swaps 8 [--clients 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.config import AppConfig  # noqa: E402
from app.loopback import LoopbackViewer, use_loopback_ice_only  # noqa: E402
from app.server import build_app  # noqa: E402
from fashionchameleon.stream import DEFAULT_CHECKPOINT, StreamingEngine  # noqa: E402


async def one_setting(engine, queue_chunks: float, clients: int, swaps: int, gap_s: float, warmup_s: float,
                      seed: int) -> dict:
    import httpx

    cfg = AppConfig(queue_chunks=queue_chunks, max_sessions=clients)
    app = build_app(engine, config=cfg, with_ui=False)
    manager = app.state.manager
    rng = np.random.default_rng(seed)
    garments = sorted(p.stem for p in cfg.garments_dir.glob("*.png"))
    refs = sorted(p.stem for p in cfg.references_dir.glob("*.png"))
    lat: list[float] = []
    out: dict = {"queue_chunks": queue_chunks, "clients": clients}
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fc.local") as http:
            viewers = [LoopbackViewer(http, keep_images=False) for _ in range(clients)]
            await asyncio.gather(*(v.start(reference=refs[i % len(refs)], garment=garments[0], seed=i)
                                   for i, v in enumerate(viewers)))
            await asyncio.sleep(warmup_s)
            t0 = time.perf_counter()
            before = [manager.stats(v.sid)["repeats"] for v in viewers]
            frames0 = [manager.stats(v.sid)["frames_delivered"] for v in viewers]
            for k in range(swaps):
                v, j = viewers[k % clients], k // clients  # each viewer alternates a new garment and the first
                target = garments[1 + j % (len(garments) - 1)] if j % 2 == 0 else garments[0]
                await asyncio.sleep(gap_s * float(rng.uniform(0.75, 1.25)))  # random phase within the chunk
                await http.post("/api/swap", json={"sid": v.sid, "garment": target})
                deadline = time.perf_counter() + 10
                while manager.stats(v.sid)["current_garment"] != target and time.perf_counter() < deadline:
                    await asyncio.sleep(0.02)
                s = manager.stats(v.sid)
                if s["current_garment"] == target and s["last_swap_latency_s"] is not None:
                    lat.append(float(s["last_swap_latency_s"]))
            elapsed = time.perf_counter() - t0
            stats = [manager.stats(v.sid) for v in viewers]
            out.update(swap_latency_s=lat, swaps_seen=len(lat),
                       swap_latency_median_s=statistics.median(lat) if lat else None,
                       swap_latency_max_s=max(lat) if lat else None,
                       repeats=[s["repeats"] - b for s, b in zip(stats, before)],
                       delivered_fps=[(s["frames_delivered"] - f) / elapsed for s, f in zip(stats, frames0)],
                       seconds=elapsed)
            for v in viewers:
                await v.close()
    finally:
        await manager.shutdown()
    return out


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    ap.add_argument("--queue-chunks", default="2,1.5,1.25")
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--swaps", type=int, default=8)
    ap.add_argument("--gap-s", type=float, default=1.7, help="mean time between clicks (jittered +-25 %%)")
    ap.add_argument("--warmup-s", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    use_loopback_ice_only()
    engine = StreamingEngine.from_checkpoint(a.checkpoint)
    res = []
    for q in [float(x) for x in a.queue_chunks.split(",") if x]:
        r = asyncio.run(one_setting(engine, q, a.clients, a.swaps, a.gap_s, a.warmup_s, a.seed))
        res.append(r)
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()
                          if k != "swap_latency_s"}), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
