"""Policy x model ablation on the held-out benchmark; writes the markdown table into docs/EVAL.md.

    python benchmarks/eval_table.py --model tf=assets/checkpoints/student_tf --model dmd0.2=... --cases 100
    python benchmarks/eval_table.py            # every checkpoint found under assets/checkpoints/

Each (model, policy) run is cached as JSON in --json-dir, so an interrupted table resumes. Models that were asked
for but are missing are listed as such in the table instead of silently dropped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fashionchameleon import evaluate as E  # noqa: E402
from fashionchameleon.reschedule import POLICIES  # noqa: E402
from fashionchameleon.stream import ASSETS_DIR, PRESET_FILE, StreamingEngine  # noqa: E402

# the ablation the table is for (docs/EVAL.md); listed as "not available" when nothing was found or passed
EXPECTED_MODELS = ("teacher-forcing student", "DMD student τ=0.2", "DMD student τ=∞")
START, END = "<!-- eval-table:start -->", "<!-- eval-table:end -->"
# (summary key, column title, statistic, format)
COLUMNS = (
    ("fidelity", "garment fidelity ↑", "mean", "{:.3f}"),
    ("fidelity_after_swap", "fidelity after swap ↑", "mean", "{:.3f}"),
    ("swap_success", "swap success ↑", "mean", "{:.2f}"),
    ("initial_success", "initial success ↑", "mean", "{:.2f}"),
    ("non_target", "non-target pres. ↑", "mean", "{:.3f}"),
    ("identity", "identity ↑", "mean", "{:.3f}"),
    ("body_iou", "body IoU vs GT ↑", "mean", "{:.3f}"),
    ("continuity_kp", "continuity (landmarks, median) →1", "median", "{:.2f}"),
    ("continuity_kp_restore", "continuity at restore (landmarks, median) →1", "median", "{:.2f}"),
    ("continuity_px", "continuity (pixels, median) →oracle", "median", "{:.2f}"),
    ("flicker", "flicker ↓", "mean", "{:.2f}"),
    ("drift", "drift 50→1000 ↓", "mean", "{:+.3f}"),
    ("swap_delay_frames", "swap delay (frames)", "mean", "{:.1f}"),
    ("fps", "FPS (2-core CPU, shared)", "mean", "{:.1f}"),
)


def find_checkpoints() -> dict[str, Path]:
    root = ASSETS_DIR / "checkpoints"
    return {p.name: p for p in sorted(root.glob("*")) if (p / PRESET_FILE).is_file()} if root.is_dir() else {}


def fmt(stat: dict, which: str, f: str, show_std: bool) -> str:
    if not stat or not stat.get("n"):
        return "–"
    s = f.format(stat[which])
    if show_std and which == "mean":
        s += f" ± {stat['std']:.2f}"
    return s


def table(rows: list[tuple[str, dict]], missing: list[str]) -> str:
    head = "| model | policy | cases (long) | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (3 + len(COLUMNS))]
    for model, res in rows:
        s = res["summary"]
        cells = [fmt(s.get(k), which, f, k in ("fidelity", "swap_success", "non_target", "identity", "body_iou"))
                 for k, _, which, f in COLUMNS]
        lines.append(f"| {model} | {res['policy']} | {res['cases']} ({res['long_cases']}) | " + " | ".join(cells) + " |")
    for m in missing:
        lines.append(f"| {m} | – | not available | " + " | ".join("–" for _ in COLUMNS) + " |")
    return "\n".join(lines)


def accuracy_table(acc: dict | None) -> str:
    if not acc:
        return "(evaluator accuracy unavailable: no metrics.json next to the evaluator weights)"
    from fashionchameleon.data.world import LABELS

    lines = ["| input | mIoU | pixel acc | " + " | ".join(f"IoU {c}" for c in LABELS) + " | landmark err (px) |",
             "|---|---|---|" + "---|" * len(LABELS) + "---|"]
    for name in ("clean", "blur1"):
        a = acc[name]
        lines.append(f"| {name} | {a['miou']:.3f} | {a['pixel_acc']:.3f} | "
                     + " | ".join(f"{a['iou'][c]:.3f}" for c in LABELS) + f" | {a['landmark_err_px']:.2f} |")
    return "\n".join(lines) + f"\n\n{acc['frames']} held-out {acc['split'].upper()}-split frames."


def _case_values(res: dict) -> dict[str, dict[int, float]]:
    """Per-case means of the paired metrics: fidelity (all segments), swap success (post-swap segments), flicker,
    body IoU against the ground-truth person (all segments), and the log of landmark continuity (its mean over the
    case's swaps; a ratio, so it is compared in logs)."""
    import math

    out: dict[str, dict[int, float]] = {"fidelity": {}, "swap_success": {}, "flicker": {}, "body_iou": {},
                                        "log_continuity": {}}

    def mean(v):
        v = [x for x in v if x is not None and not (isinstance(x, float) and math.isnan(x))]
        return sum(v) / len(v) if v else None

    for c in res.get("per_case", []):
        segs = c.get("segments", [])
        for k, v in (("fidelity", mean([g["fidelity"] for g in segs])),
                     ("swap_success", mean([g["success"] for g in segs[1:]])),
                     ("flicker", c.get("flicker")),
                     ("body_iou", mean([g.get("body_iou") for g in segs])),
                     ("log_continuity", mean([math.log(x) for x in c.get("continuity_kp") or []
                                              if x is not None and math.isfinite(x) and x > 0]))):
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                out[k][c["case"]] = float(v)
    return out


def paired_table(rows: list[tuple[str, dict]], base: str, samples: int = 2000, seed: int = 0,
                 base_policy: str | None = None) -> str:
    """Each model minus `base` under the same policy (or under `base_policy` for every row, to compare policies),
    on the same cases: mean difference and a 95 % bootstrap
    interval over cases (the cases are shared, so the pairing removes the case-to-case spread). Landmark continuity
    is a ratio (swap jump over the stream's usual jump), so its column is the geometric mean of the per-case ratios
    model / base: ×1 is no change, below 1 a smaller swap jump."""
    import numpy as np

    by = {(name, r.get("policy")): _case_values(r) for name, r in rows}
    lines = ["| model − " + base + (f" ({base_policy})" if base_policy else "") + " | policy | cases | Δ garment fidelity [95 % CI] | Δ swap success [95 % CI] | "
             "Δ flicker [95 % CI] | Δ body IoU [95 % CI] | continuity ratio (landmarks) [95 % CI] |",
             "|---|---|---|---|---|---|---|---|"]
    rng = np.random.default_rng(seed)
    for (name, policy), vals in by.items():
        bkey = (base, base_policy or policy)
        if (name, policy) == bkey or bkey not in by:
            continue
        ref = by[bkey]
        cells, n_cases = [], 0
        for k in ("fidelity", "swap_success", "flicker", "body_iou", "log_continuity"):
            common = sorted(set(vals[k]) & set(ref[k]))
            if not common:
                cells.append("–")
                continue
            d = np.array([vals[k][i] - ref[k][i] for i in common])
            boot = d[rng.integers(0, len(d), (samples, len(d)))].mean(axis=1)
            lo, hi = np.percentile(boot, [2.5, 97.5])
            if k == "log_continuity":
                cells.append(f"×{np.exp(d.mean()):.2f} [×{np.exp(lo):.2f}, ×{np.exp(hi):.2f}]")
            else:
                cells.append(f"{d.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]")
            n_cases = max(n_cases, len(common))
        lines.append(f"| {name} | {policy} | {n_cases} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def write_md(path: Path, block: str) -> None:
    text = path.read_text() if path.is_file() else "# Evaluation\n\n"
    new = f"{START}\n{block}\n{END}"
    if START in text and END in text:
        pre, rest = text.split(START, 1)
        text = pre + new + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + new + "\n"
    path.write_text(text)


def run_key(name: str, model_dir: Path | None) -> str:
    """Cache-file stem: the full model name (slugged) + a digest of the checkpoint's weight files' contents and its
    streaming settings, so a retrained model, the same weights streamed otherwise (context noise, garment bias) or
    two names sharing a first word never reuse another run's results, and a copied checkpoint (runs/X/final
    exported to assets/) still finds its own."""
    import hashlib
    import re

    slug = re.sub(r"[^A-Za-z0-9.=-]+", "_", name.replace("τ", "tau").replace("∞", "inf")).strip("_")
    if model_dir is None:
        return slug
    h = hashlib.sha1(name.encode())
    for f in sorted(Path(model_dir).rglob("*.safetensors"), key=lambda f: f.relative_to(model_dir).as_posix()):
        h.update(f.relative_to(model_dir).as_posix().encode())
        h.update(hashlib.sha1(f.read_bytes()).digest())
    preset = Path(model_dir) / "preset.json"
    if preset.is_file():
        h.update(json.dumps(json.loads(preset.read_text())["stream"], sort_keys=True).encode())
    return f"{slug}_{h.hexdigest()[:8]}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", default=[], help="name=DIR (repeatable)")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--cases", type=int, default=100, help="cases for the first model")
    ap.add_argument("--cases-other", type=int, default=None, help="cases for the other models (default --cases)")
    ap.add_argument("--cases-for", action="append", default=[],
                    help="POLICY=N: case count of that policy for every model (overrides --cases/--cases-other)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--oracle-cases", type=int, default=None, help="cases of the oracle row (default --cases)")
    ap.add_argument("--no-oracle", action="store_true", help="skip the ground-truth-render row")
    ap.add_argument("--random-weights", action="store_true", help="add a random-weights tiny engine row")
    ap.add_argument("--json-dir", default="/tmp/fashionchameleon_eval")
    ap.add_argument("--md", default=str(REPO / "docs" / "EVAL.md"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--base", default=EXPECTED_MODELS[0], help="model the paired differences are taken against")
    ap.add_argument("--base-policy", default=None,
                    help="take every row's differences against the base model under this policy (compares policies)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    models, missing = {}, []
    for spec in a.model:
        name, _, d = spec.rpartition("=")  # names may contain "=" (τ=0.2), paths rarely do
        if (Path(d) / PRESET_FILE).is_file():
            models[name] = Path(d)
        else:
            missing.append(f"{name} (`{d}` not found)")
    if not a.model:
        models = find_checkpoints()
    missing += [f"{m} (no checkpoint passed or found)" for m in EXPECTED_MODELS
                if m not in models and not any(x.startswith(m + " ") for x in missing)]
    policies = [p for p in a.policies.split(",") if p]
    ev = E.Evaluator()
    cfg = E.BenchConfig()
    jdir = Path(a.json_dir)
    jdir.mkdir(parents=True, exist_ok=True)
    runs: list[tuple[str, str, int]] = []
    if not a.no_oracle:
        runs.append(("oracle (GT render)", "oracle", a.oracle_cases or a.cases))
    per_policy = {k: int(v) for k, _, v in (c.partition("=") for c in a.cases_for)}
    for i, name in enumerate(models):
        n = a.cases if i == 0 else (a.cases_other or a.cases)
        runs += [(name, p, per_policy.get(p, n)) for p in policies]
    if a.random_weights:
        runs += [("random-weights tiny", p, a.cases_other or a.cases) for p in policies]
    keys = {name: run_key(name, models.get(name)) for name, _, _ in runs}  # hashes each checkpoint once
    rows = []
    for name, policy, n in runs:
        out = jdir / f"{keys[name]}_{policy}_n{n}_s{a.seed}.json"
        if out.is_file():
            res = json.loads(out.read_text())
        else:
            engine = None
            if name in models:
                engine = StreamingEngine.from_checkpoint(models[name])
            elif name.startswith("random"):
                engine = StreamingEngine.from_preset("tiny", random_weights=True)
            cases = E.build_cases(n, a.seed, cfg)
            t0 = time.time()
            def progress(i, r, name=name, policy=policy, n=n, t0=t0):
                print(f"  {name}/{policy} case {i + 1}/{n} ({time.time() - t0:.0f}s)", file=sys.stderr, flush=True)

            res = E._jsonable(E.evaluate(engine, policy, cases, ev, cfg, progress))
            res["wall_s"] = time.time() - t0
            out.write_text(json.dumps(res))
            print(f"{name} / {policy}: {n} cases in {res['wall_s']:.0f}s", file=sys.stderr, flush=True)
        rows.append((name, res))
    block = "\n\n".join([
        f"Generated by `benchmarks/eval_table.py` on {time.strftime('%Y-%m-%d')}; case-set seed {a.seed}, "
        f"TEST split, short cases {cfg.short_frames} frames, every {cfg.long_every}th case {cfg.long_frames} frames.",
        "Models available: " + (", ".join(f"`{k}` (`{v}`)" for k, v in models.items()) or "none") +
        (". Not available: " + ", ".join(missing) if missing else "") + ".",
        table(rows, missing),
        *([f"### Paired differences against the {a.base} (same cases)", paired]
          if (paired := paired_table(rows, a.base, base_policy=a.base_policy)) else []),
        "### Evaluation model held-out accuracy",
        accuracy_table(ev.accuracy()),
    ])
    write_md(Path(a.md), block)
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
