#!/usr/bin/env python3
"""Merge the peer harness's JSON lines into a Markdown table and a PNG plot.

Reads every target/peers/*.jsonl: results-python.jsonl (benches/peers/peers.py) and,
when present, results-rust.jsonl (the Rust side, benches/src/bin/peers-rust.rs: impl
names `cryptocore-envelope`, `cryptocore-envelope-into`, `kmsctl`, `aws-lc-rs-raw`) and
results-c.jsonl (the C side, benches/peers/c_api_bench.c: `cryptocore-c-api`, the C ABI
from a C program). Any other *.jsonl there is read too.

Line schema (one JSON object per line; unknown keys are ignored):
  result lines  {"impl", "op": "seal"|"open", "size": bytes, "gbps": 10^9 B/s,
                 "runs", "note", ...optional "version", "seconds", "batch", "quick"}
                 ("kind": "result" may be given; a line with impl/op/size/gbps and no
                 "kind" is a result line)
  meta line     {"kind": "meta", "source", "run_id", "date", "quick", "affinity",
                 "cpu", ...}  one per file, optional
  version line  {"kind": "version", "impl", "version", "note"}  optional
  skip line     {"kind": "skip", "impl", "note"}  a peer that could not run
  error line    {"kind": "error", "impl", "op", "size", "note"}  a failed check

Ratios are to `aws-lc-rs-raw` (the per-core limit, from the Rust side) when the run has
it, else to `cryptography-aesgcm`. Under the table comes the goals table: the seal
throughput of `cryptocore-envelope-in-place` (in place, like the raw row),
`cryptocore-envelope-into` (reused output buffers) and
`cryptocore-envelope` (a new Vec per message) at 1 MiB and 64 MiB against (a) 10x the best
envelope peer (ENVELOPE_PEERS: `aws-encryption-sdk`, `tink-streaming`, `age`) and
(b) 90 % of `aws-lc-rs-raw`.

Prints the Markdown block. With --write-results it also replaces the block between
`<!-- peers:begin -->` and `<!-- peers:end -->` in benches/RESULTS.md (appending a
section with those markers if the file has none) and writes the plot to
benches/peers/throughput.png; without it the plot goes to target/peers/throughput.png
and nothing under benches/ is written.
"""

import argparse
import glob
import json
import os
import sys

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BEGIN = "<!-- peers:begin -->"
END = "<!-- peers:end -->"

KiB = 1024
MiB = 1024 * KiB
STANDARD_SIZES = [1 * KiB, 1 * MiB, 64 * MiB]

# Row order; implementations not listed here follow, sorted by name.
ORDER = [
    "aws-lc-rs-raw",
    "cryptography-aesgcm",
    "cryptocore-envelope-in-place",
    "cryptocore-envelope-into",
    "cryptocore-envelope",
    "cryptocore-c-api",
    "kmsctl",
    "aws-encryption-sdk",
    "tink-aead",
    "tink-streaming",
    "age",
]
LIMIT = "aws-lc-rs-raw"          # the per-core limit, when the Rust side ran
FALLBACK_REF = "cryptography-aesgcm"

# The goals table. The subject is this project's envelope; the envelope peers are the
# peers that, like it, seal a whole message under a fresh per-message key and write a
# self-describing header: aws-encryption-sdk (fresh data key wrapped by the raw AES
# keyring), tink-streaming (per-message key by HKDF from a random salt) and age (fresh
# file key wrapped to an X25519 recipient). tink-aead and cryptography-aesgcm are bare
# AEADs (one long-lived key, no per-message key): they do not count.
# Three subjects: the envelope sealing in place (`seal_in_place`, measured exactly like
# aws-lc-rs-raw: a buffer holding the input, made outside the timer), into the caller's
# reused output buffers (`seal_into`) and through the one-shot calls that return a new
# Vec per message (`seal`).
GOAL_SUBJECTS = ["cryptocore-envelope-in-place", "cryptocore-envelope-into", "cryptocore-envelope"]
ENVELOPE_PEERS = ["aws-encryption-sdk", "tink-streaming", "age"]
GOAL_SIZES = [1 * MiB, 64 * MiB]
GOAL_PEER_FACTOR = 10.0          # seal >= 10x the best envelope peer
GOAL_LIMIT_FRACTION = 0.90       # seal >= 90 % of aws-lc-rs-raw

DESCRIPTION = {
    "aws-lc-rs-raw": "raw aws-lc-rs AES-256-GCM, one core (the per-core limit)",
    "cryptography-aesgcm": "Python `cryptography` AESGCM: raw OpenSSL AES-256-GCM, no envelope (the ceiling reference among the Python peers)",
    "cryptocore-envelope-in-place": "this project's library, envelope v1, `seal_in_place`/`open_in_place` (measured like the raw row)",
    "cryptocore-envelope-into": "this project's library, envelope v1, `seal_into`/`open_into` into reused buffers",
    "cryptocore-envelope": "this project's library, envelope v1, `seal`/`open` (a new Vec per message)",
    "cryptocore-c-api": "this project's C ABI (`ffi`)",
    "kmsctl": "`kmsctl encrypt` on a file (whole command)",
    "aws-encryption-sdk": "Python aws-encryption-sdk, raw AES keyring, key-committing suite",
    "tink-aead": "Python tink AEAD AES256_GCM",
    "tink-streaming": "Python tink StreamingAead AES256_GCM_HKDF_1MB",
    "age": "`age` CLI on files (whole command, includes process start)",
}


def human_size(n):
    if n == 0:
        return "0 B"
    for unit, div in (("GiB", 1024 * MiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"


def fmt_gbps(v):
    if v is None:
        return "—"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 0.1:
        return f"{v:.2f}"
    return f"{v:.2g}" if v >= 1e-4 else f"{v:.1e}"


def fmt_ratio(r):
    if r is None:
        return "—"
    pct = r * 100
    if pct >= 10:
        return f"{pct:.0f} %"
    if pct >= 1:
        return f"{pct:.1f} %"
    return f"{pct:.2g} %"


def fmt_seconds(s):
    if s is None:
        return "?"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.2f} µs"


def load(results_dir):
    files = sorted(glob.glob(os.path.join(results_dir, "*.jsonl")))
    # results-python first, then results-rust, then anything else (stable).
    rank = {"results-python.jsonl": 0, "results-rust.jsonl": 1}
    files.sort(key=lambda p: (rank.get(os.path.basename(p), 2), p))
    metas, results, versions, notes, skips, errors, warnings = [], {}, {}, {}, [], [], []
    for path in files:
        base = os.path.basename(path)
        with open(path) as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    warnings.append(f"{base}:{lineno}: not JSON ({e}); line ignored")
                    continue
                kind = rec.get("kind") or ("result" if "impl" in rec and "gbps" in rec else "?")
                impl = rec.get("impl")
                if kind == "meta":
                    rec["_file"] = base
                    metas.append(rec)
                elif kind == "version":
                    versions.setdefault(impl, rec.get("version", ""))
                    if rec.get("note"):
                        notes.setdefault(impl, rec["note"])
                elif kind == "skip":
                    skips.append(rec)
                elif kind == "error":
                    errors.append(rec)
                elif kind == "result":
                    try:
                        key = (impl, rec["op"], int(rec["size"]))
                        float(rec["gbps"])
                    except (KeyError, TypeError, ValueError):
                        warnings.append(f"{base}:{lineno}: result line without impl/op/size/gbps; ignored")
                        continue
                    if key in results:
                        warnings.append(f"{base}:{lineno}: {impl} {rec['op']} {human_size(key[2])} given twice; the later line is used")
                    rec["_file"] = base
                    results[key] = rec
                    if rec.get("version"):
                        versions.setdefault(impl, rec["version"])
                    if rec.get("note") and rec.get("size"):
                        notes.setdefault(impl, rec["note"])
                else:
                    warnings.append(f"{base}:{lineno}: unknown kind {kind!r}; ignored")
    return files, metas, results, versions, notes, skips, errors, warnings


def cpu_line():
    model, count = None, 0
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model is None:
                    model = line.split(":", 1)[1].strip()
                if line.startswith("processor"):
                    count += 1
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    feats = [x for x in ("aes", "pclmulqdq", "avx2", "vaes", "vpclmulqdq", "avx512f", "sha_ni") if x in flags]
    s = f"{model or '?'} ({count} logical cores visible)"
    if feats:
        s += f", features: {' '.join(feats)}"
    return s


def ordered_impls(results):
    present = {k[0] for k in results}
    rows = [i for i in ORDER if i in present]
    rows += sorted(present - set(rows))
    return rows


def fmt_times(r):
    if r is None:
        return "—"
    return f"{r:.1f}×" if r < 100 else f"{r:.0f}×"


def goals_markdown(results, quick):
    """The goals table: each GOAL_SUBJECTS row's seal against the best envelope peer and
    against aws-lc-rs-raw, at GOAL_SIZES. Missing figures read "not measured"."""

    def gbps(impl, size):
        r = results.get((impl, "seal", size))
        return float(r["gbps"]) if r and float(r["gbps"]) > 0 else None

    subjects = [s for s in GOAL_SUBJECTS if any(k[0] == s for k in results)] or GOAL_SUBJECTS[:1]
    out = []
    out.append("Goals (seal, one core): this project's envelope ≥ "
               f"{GOAL_PEER_FACTOR:g}× the best envelope peer and ≥ {GOAL_LIMIT_FRACTION * 100:g} % of "
               "`aws-lc-rs-raw`, at " + " and ".join(human_size(s) for s in GOAL_SIZES) + ". "
               "Envelope peers: " + ", ".join(f"`{p}`" for p in ENVELOPE_PEERS)
               + " (a whole message under a fresh per-message key, self-describing header); "
               "`tink-aead` and `cryptography-aesgcm` are bare AEADs and do not count. "
               "Subjects: " + ", ".join(f"`{s}`" for s in subjects) + "."
               + (" **Quick run: indicative only.**" if quick else ""))
    out.append("")
    out.append("| goal | size | subject | subject seal GB/s | reference | reference GB/s | achieved | target | met |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    ceiling_notes = []
    for size in GOAL_SIZES:
        peers = [(p, gbps(p, size)) for p in ENVELOPE_PEERS]
        peers = [(p, v) for p, v in peers if v is not None]
        best = max(peers, key=lambda pv: pv[1]) if peers else None
        limit = gbps(LIMIT, size)
        if best and limit is not None and limit < GOAL_PEER_FACTOR * best[1]:
            ceiling_notes.append(
                f"At {human_size(size)}, {GOAL_PEER_FACTOR:g}× `{best[0]}` is {fmt_gbps(GOAL_PEER_FACTOR * best[1])} GB/s, "
                f"above the per-core limit `{LIMIT}` of {fmt_gbps(limit)} GB/s "
                f"({fmt_times(limit / best[1])} the best peer): no AES-256-GCM envelope can reach it on one core "
                "of this machine.")
        for subject in subjects:
            mine = gbps(subject, size)
            ratio = mine / best[1] if (mine is not None and best) else None
            met = "—" if ratio is None else ("yes" if ratio >= GOAL_PEER_FACTOR else "**no**")
            out.append("| " + " | ".join([
                f"≥ {GOAL_PEER_FACTOR:g}× best envelope peer",
                human_size(size),
                f"`{subject}`",
                fmt_gbps(mine),
                f"`{best[0]}` (best of {len(peers)})" if best else "not measured",
                fmt_gbps(best[1]) if best else "—",
                fmt_times(ratio),
                f"≥ {GOAL_PEER_FACTOR:g}×",
                met,
            ]) + " |")
    for size in GOAL_SIZES:
        limit = gbps(LIMIT, size)
        for subject in subjects:
            mine = gbps(subject, size)
            ratio = mine / limit if (mine is not None and limit is not None) else None
            met = "—" if ratio is None else ("yes" if ratio >= GOAL_LIMIT_FRACTION else "**no**")
            out.append("| " + " | ".join([
                f"≥ {GOAL_LIMIT_FRACTION * 100:g} % of `{LIMIT}`",
                human_size(size),
                f"`{subject}`",
                fmt_gbps(mine),
                f"`{LIMIT}`" if limit is not None else "not measured",
                fmt_gbps(limit),
                fmt_ratio(ratio),
                f"≥ {GOAL_LIMIT_FRACTION * 100:g} %",
                met,
            ]) + " |")
    out.append("")
    if ceiling_notes:
        out.extend(ceiling_notes)
        out.append("")
    return out


def build_markdown(files, metas, results, versions, notes, skips, errors, warnings):
    sizes = sorted({k[2] for k in results if k[2] > 0})
    ref = LIMIT if any(k[0] == LIMIT for k in results) else FALLBACK_REF
    if not any(k[0] == ref for k in results):
        ref = None
    quick = any(m.get("quick") for m in metas) or any(r.get("quick") for r in results.values())

    out = []
    out.append("## Peers: seal and open throughput, one core (`benches/peers/run.sh`)")
    out.append("")
    if quick:
        out.append("**Quick (smoke) run: short durations, not figures to publish.**")
        out.append("")
    # Machine line.
    dates = sorted({m.get("date", "") for m in metas if m.get("date")})
    run_ids = {m.get("run_id", "") for m in metas}
    pinned = sorted({tuple(m.get("affinity", [])) for m in metas if m.get("affinity") is not None})
    pin_s = "; ".join(
        ("core " + ",".join(map(str, p))) if len(p) == 1 else f"NOT pinned (CPUs {','.join(map(str, p))})"
        for p in pinned
    ) or "unknown"
    # One entry per distinct version string (tink-aead and tink-streaming share one).
    vlist = []
    for impl in sorted(versions, key=lambda i: (ORDER.index(i) if i in ORDER else len(ORDER), i)):
        v = versions[impl]
        if v and v not in vlist:
            vlist.append(v)
    pythons = sorted({m.get("python") for m in metas if m.get("python")})
    machine = f"Machine: {cpu_line()}; pinned to {pin_s} (`taskset`); run {', '.join(dates) or '?'}"
    if pythons:
        machine += f"; Python {', '.join(pythons)}"
    out.append(machine)
    out.append("")
    if vlist:
        out.append("Versions: " + "; ".join(vlist) + ".")
        out.append("")
    if len(run_ids) > 1:
        out.append(f"**Warning: the result files come from different runs ({', '.join(sorted(r or '?' for r in run_ids))}); "
                   "run `benches/peers/run.sh` to measure everything in one run.**")
        out.append("")

    out.append("GB/s = 10^9 bytes of plaintext per second, median of the samples "
               "(method below). "
               + (f"Ratio = the row ÷ `{ref}` for the same operation and size, measured in the same run"
                  + (" (the per-core limit)." if ref == LIMIT else
                     " (the Rust side, with the aws-lc-rs limit, was not in this run).")
                  if ref else "No reference row: no ratio."))
    out.append("")

    head = ["impl", "op"]
    for s in sizes:
        head.append(f"{human_size(s)} GB/s")
        if ref:
            head.append("ratio")
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for impl in ordered_impls(results):
        for op in ("seal", "open"):
            if not any((impl, op, s) in results for s in sizes):
                continue
            label = f"`{impl}`"
            if (impl, op, 0) in results:
                label += " (incl. process start)"
            cells = [label, op]
            for s in sizes:
                r = results.get((impl, op, s))
                v = float(r["gbps"]) if r else None
                cells.append(fmt_gbps(v))
                if ref:
                    rr = results.get((ref, op, s))
                    ratio = (v / float(rr["gbps"])) if (r and rr and float(rr["gbps"]) > 0) else None
                    cells.append(fmt_ratio(ratio))
            out.append("| " + " | ".join(cells) + " |")
    out.append("")

    # Process start cost (size-0 lines, age) and other notes.
    starts = sorted((k for k in results if k[2] == 0), key=lambda k: (k[0], k[1] != "seal"))
    if starts:
        parts = [f"`{i}` {op} {fmt_seconds(results[(i, op, 0)].get('seconds'))}" for i, op, _ in starts]
        out.append("Process start + empty file, included in every figure of that impl's rows: "
                   + ", ".join(parts) + ".")
        out.append("")

    out.extend(goals_markdown(results, quick))

    out.append("What each row is:")
    out.append("")
    for impl in ordered_impls(results):
        # The producer's own note says exactly what was run; the built-in line is a fallback.
        text = notes.get(impl) or DESCRIPTION.get(impl) or "(no description)"
        out.append(f"- `{impl}`: {text.rstrip('.')}.")
    out.append("")
    methods = sorted({m.get("method") for m in metas if m.get("method")})
    for m in metas:
        if m.get("method"):
            out.append(f"Method ({m.get('source', m['_file'])}): {m['method']}.")
    if methods:
        out.append("")
    for s in skips:
        out.append(f"**Not measured: `{s.get('impl')}`: {s.get('note', '')}**")
    for e in errors:
        out.append(f"**Check failed: `{e.get('impl')}` {e.get('op')} {human_size(int(e.get('size', 0)))}: {e.get('note', '')}**")
    if skips or errors:
        out.append("")
    out.append("Reproduce: `benches/peers/run.sh` (then `--write-results` to update this block).")
    return "\n".join(out) + "\n", quick


def plot(results, path, title_extra):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        print(f"report.py: no plot: matplotlib missing ({e}); run inside target/peers-venv", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
    impls = ordered_impls(results)
    cmap = plt.get_cmap("tab10")
    for idx, impl in enumerate(impls):
        color = cmap(idx % 10)
        for op, style, marker in (("seal", "-", "o"), ("open", "--", "s")):
            pts = sorted((k[2], float(r["gbps"])) for k, r in results.items()
                         if k[0] == impl and k[1] == op and k[2] > 0 and float(r["gbps"]) > 0)
            if not pts:
                continue
            xs, ys = zip(*pts)
            ax.plot(xs, ys, linestyle=style, marker=marker, color=color, label=f"{impl} {op}")
    sizes = sorted({k[2] for k in results if k[2] > 0})
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sizes)
    ax.set_xticklabels([human_size(s) for s in sizes])
    ax.set_xlabel("message size")
    ax.set_ylabel("GB/s of plaintext (10^9 B/s)")
    ax.set_title("Seal/open throughput, one core" + title_extra, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def write_results_md(md_path, block):
    text = open(md_path).read() if os.path.exists(md_path) else "# Benchmark results\n"
    new_block = f"{BEGIN}\n{block}{END}"
    b, e = text.find(BEGIN), text.find(END)
    if b != -1 and e != -1 and e > b:
        text = text[:b] + new_block + text[e + len(END):]
        how = "replaced the block"
    elif b == -1 and e == -1:
        text = text.rstrip("\n") + "\n\n" + new_block + "\n"
        how = "appended a new block (no markers were there)"
    else:
        raise SystemExit(f"report.py: {md_path}: unbalanced {BEGIN} / {END} markers; not written")
    with open(md_path, "w") as f:
        f.write(text)
    return how


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results-dir", default=os.path.join(REPO_ROOT, "target", "peers"))
    ap.add_argument("--write-results", action="store_true",
                    help="replace the peers block in benches/RESULTS.md and write benches/peers/throughput.png")
    ap.add_argument("--results-md", default=os.path.join(REPO_ROOT, "benches", "RESULTS.md"))
    ap.add_argument("--plot", default=None,
                    help="PNG path (default: benches/peers/throughput.png with --write-results, "
                         "else target/peers/throughput.png)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--allow-quick", action="store_true",
                    help="let --write-results publish a --quick run (refused otherwise)")
    args = ap.parse_args()

    loaded = load(args.results_dir)
    files, metas, results, versions, notes, skips, errors, warnings = loaded
    if not files:
        print(f"report.py: no *.jsonl in {args.results_dir}; run benches/peers/run.sh first", file=sys.stderr)
        return 1
    for w in warnings:
        print(f"report.py: warning: {w}", file=sys.stderr)
    if not results:
        print("report.py: no result lines", file=sys.stderr)
        return 1

    block, quick = build_markdown(*loaded)
    if args.write_results and quick and not args.allow_quick:
        print(block)
        print("report.py: refusing to publish a --quick run (RESULTS.md and benches/peers/throughput.png "
              "untouched; --allow-quick forces it)", file=sys.stderr)
        return 1
    plot_path = args.plot or (os.path.join(REPO_ROOT, "benches", "peers", "throughput.png") if args.write_results
                              else os.path.join(REPO_ROOT, "target", "peers", "throughput.png"))
    rel_plot = os.path.relpath(plot_path, os.path.dirname(os.path.abspath(args.results_md)))
    if args.write_results:
        block += f"\n![Seal/open throughput against size, one core]({rel_plot})\n"

    print(block)
    files_s = ", ".join(os.path.relpath(f, os.getcwd()) for f in files)
    print(f"report.py: read {files_s}", file=sys.stderr)

    if not args.no_plot:
        cpu = cpu_line().split(" (")[0]
        dates = sorted({m.get("date", "")[:10] for m in metas if m.get("date")})
        extra = f" — {cpu}, {', '.join(dates)}" + (" — QUICK smoke run" if quick else "")
        if plot(results, plot_path, extra):
            print(f"report.py: plot written to {os.path.relpath(plot_path, os.getcwd())}", file=sys.stderr)

    if args.write_results:
        how = write_results_md(args.results_md, block)
        print(f"report.py: {os.path.relpath(args.results_md, os.getcwd())}: {how}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
