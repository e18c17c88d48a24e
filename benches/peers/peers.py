#!/usr/bin/env python3
"""Seal/open throughput of the Python peers and the `age` CLI, one JSON line per cell.

Run by benches/peers/run.sh inside target/peers-venv, pinned to one core with
`taskset`. Can also be run by hand (see --help); it then measures on whatever
cores the process is allowed, and says so in its meta line.

Peers (impl names used in the JSON lines and the report):

  cryptography-aesgcm  `cryptography` AESGCM: raw OpenSSL AES-256-GCM, no envelope,
                       one fixed key, distinct 12-byte nonces made outside the timer,
                       no AAD (the ceiling reference among the Python peers).
  aws-encryption-sdk   aws-encryption-sdk, RawMasterKey (raw AES-256-GCM wrapping key),
                       CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT and the
                       committing suite WITHOUT signature,
                       AES_256_GCM_HKDF_SHA512_COMMIT_KEY, encryption context of two
                       pairs, default 4096-byte frames, no data-key cache (a fresh data
                       key is made and wrapped per message).
  tink-aead            tink AEAD, AES256_GCM key template, associated data = the two
                       context pairs encoded as bytes.
  tink-streaming       tink StreamingAead, AES256_GCM_HKDF_1MB key template (1 MiB
                       segments), in-memory streams (io.BytesIO), whole message
                       written / read in one call.
  age                  the `age` CLI on files, X25519 recipient from age-keygen. The
                       whole command is timed, so process start is included; the
                       start cost is measured on an empty file and written as the
                       size-0 lines.

Method, the same for every peer:
  * fresh inputs from os.urandom for every timed sample (made outside the timer);
  * correctness first: one seal + open, output compared with the input, before any
    timing; then every timed open's output is compared with its input and every
    timed seal's output is opened and compared (outside the timer); a mismatch
    aborts the run;
  * warm-up (0.2 s, at least one operation), untimed;
  * small operations are timed in batches (so that a sample lasts >= 5 ms), one
    operation per sample otherwise; samples are repeated until the timed total is
    >= 1 s and there are >= 5 samples (>= 3 samples for sizes >= 64 MiB);
  * the reported figure is the median time per operation over the samples;
    GB/s = 10^9 bytes of plaintext per second;
  * the garbage collector is off inside the timed region (as timeit does).
  --quick: 1 KiB and 1 MiB only, 0.15 s per cell, 2 ms samples, 0.02 s warm-up:
  a smoke run to check that everything works, not numbers to publish.
"""

import argparse
import datetime
import gc
import io
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

KiB = 1024
MiB = 1024 * KiB
SIZES_FULL = [1 * KiB, 1 * MiB, 64 * MiB]
SIZES_QUICK = [1 * KiB, 1 * MiB]

# The encryption context used wherever a peer takes one (two pairs, as the
# project's own benchmarks use).
CONTEXT = {"tenant": "acme", "purpose": "peer-bench"}
CONTEXT_BYTES = b"tenant=acme;purpose=peer-bench"

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


class Method:
    """Timing parameters; see the module docstring."""

    def __init__(self, quick):
        self.quick = quick
        if quick:
            self.min_time = 0.15
            self.min_runs = 3
            self.min_runs_large = 3
            self.sample_target = 0.002
            self.warmup = 0.02
            self.max_wall = 10.0
        else:
            self.min_time = 1.0
            self.min_runs = 5
            self.min_runs_large = 3
            self.sample_target = 0.005
            self.warmup = 0.2
            self.max_wall = 120.0
        self.large = 64 * MiB          # sizes from here need only min_runs_large samples
        self.max_batch_bytes = 64 * MiB  # inputs of one batch held in memory at most
        self.max_runs = 100_000

    def describe(self):
        return (
            f"warm-up {self.warmup:g} s; samples of >= {self.sample_target * 1e3:g} ms "
            f"(batched below that); repeat until >= {self.min_time:g} s timed and "
            f">= {self.min_runs} samples (>= {self.min_runs_large} from "
            f"{human_size(self.large)}); median per operation; fresh os.urandom inputs; "
            f"every output checked outside the timer; gc off while timing"
        )


def human_size(n):
    if n == 0:
        return "0 B"
    for unit, div in (("MiB", MiB), ("KiB", KiB)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"


class CheckFailed(Exception):
    pass


def require_equal(expected, got, what):
    if len(expected) != len(got):
        raise CheckFailed(f"{what}: {len(got)} outputs for {len(expected)} inputs")
    for i, (e, g) in enumerate(zip(expected, got)):
        if e != g:
            raise CheckFailed(
                f"{what}: output {i} differs from the original "
                f"({len(g)} bytes vs {len(e)} bytes)"
            )


# --------------------------------------------------------------------------- peers
#
# A peer measures one batch at a time:
#   seal_prep(pts) -> state     outside the timer
#   seal_run(state) -> outs     timed
#   seal_check(pts, outs)       outside the timer; raises CheckFailed
#   open_prep(pts) -> state     outside the timer (seals the inputs)
#   open_run(state) -> outs     timed
#   open_check(pts, outs)       outside the timer; raises CheckFailed


class Peer:
    name = "?"
    note = ""
    version = ""

    def seal_prep(self, pts):
        return pts

    def seal_check(self, pts, outs):
        require_equal(pts, self.open_all(outs), f"{self.name}: seal output did not open")

    def open_prep(self, pts):
        return self.seal_all(pts)

    def open_check(self, pts, outs):
        require_equal(pts, outs, f"{self.name}: open")

    def seal_all(self, pts):
        return self.seal_run(self.seal_prep(pts))

    def open_all(self, cts):
        return self.open_run(cts)

    def close(self):
        pass


class CryptographyAesGcm(Peer):
    name = "cryptography-aesgcm"

    def __init__(self):
        import cryptography
        from cryptography.hazmat.backends.openssl import backend
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.version = f"cryptography {cryptography.__version__} ({backend.openssl_version_text()})"
        self.note = (
            "raw AES-256-GCM via OpenSSL, no envelope, fixed key, distinct 12-byte nonces "
            "prepared outside the timer, no AAD; the ceiling among the Python peers"
        )
        self.aead = AESGCM(os.urandom(32))
        self.counter = 0

    def _nonces(self, n):
        start = self.counter
        self.counter += n
        return [(start + i).to_bytes(12, "big") for i in range(n)]

    def seal_prep(self, pts):
        return list(zip(self._nonces(len(pts)), pts))

    def seal_run(self, st):
        enc = self.aead.encrypt
        return [(n, enc(n, p, None)) for n, p in st]

    def seal_check(self, pts, outs):
        dec = self.aead.decrypt
        require_equal(pts, [dec(n, c, None) for n, c in outs], f"{self.name}: seal output did not open")

    def open_prep(self, pts):
        return self.seal_run(self.seal_prep(pts))

    def open_run(self, st):
        dec = self.aead.decrypt
        return [dec(n, c, None) for n, c in st]


class AwsEncryptionSdk(Peer):
    name = "aws-encryption-sdk"

    def __init__(self):
        import aws_encryption_sdk
        from aws_encryption_sdk import Algorithm, CommitmentPolicy
        from aws_encryption_sdk.identifiers import EncryptionKeyType, WrappingAlgorithm
        from aws_encryption_sdk.key_providers.raw import RawMasterKey, WrappingKey

        self.version = f"aws-encryption-sdk {aws_encryption_sdk.__version__}"
        self.suite = Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY
        self.note = (
            "RawMasterKey with a 256-bit AES-GCM wrapping key (raw AES keyring), "
            "CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT, suite "
            "AES_256_GCM_HKDF_SHA512_COMMIT_KEY (key-committing, no signature; the SDK's "
            "default is the ECDSA-P384-signing variant), encryption context of two pairs, "
            "4096-byte frames, fresh data key per message (no caching CMM)"
        )
        self.client = aws_encryption_sdk.EncryptionSDKClient(
            commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
        )
        self.key = RawMasterKey(
            provider_id="peers-bench",
            key_id=b"wrapping-key-1",
            wrapping_key=WrappingKey(
                wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
                wrapping_key=os.urandom(32),
                wrapping_key_type=EncryptionKeyType.SYMMETRIC,
            ),
        )

    def seal_run(self, pts):
        enc = self.client.encrypt
        key, suite = self.key, self.suite
        return [
            enc(source=p, key_provider=key, encryption_context=CONTEXT, algorithm=suite)[0]
            for p in pts
        ]

    def open_run(self, cts):
        dec = self.client.decrypt
        key = self.key
        return [dec(source=c, key_provider=key) for c in cts]

    def _check_headers(self, outs):
        for _, header in outs:
            if header.algorithm != self.suite:
                raise CheckFailed(f"{self.name}: message used suite {header.algorithm}")
            for k, v in CONTEXT.items():
                if header.encryption_context.get(k) != v:
                    raise CheckFailed(f"{self.name}: encryption context lost {k!r}")

    def seal_check(self, pts, outs):
        opened = self.open_run(outs)
        self._check_headers(opened)
        require_equal(pts, [p for p, _ in opened], f"{self.name}: seal output did not open")

    def open_check(self, pts, outs):
        self._check_headers(outs)
        require_equal(pts, [p for p, _ in outs], f"{self.name}: open")


class TinkAead(Peer):
    name = "tink-aead"

    def __init__(self):
        import tink
        from tink import aead

        aead.register()
        self.version = f"tink {_dist_version('tink')}"
        self.note = "tink Aead, AES256_GCM key template (random 12-byte nonce, 5-byte key-id prefix), associated data = two context pairs"
        handle = tink.new_keyset_handle(aead.aead_key_templates.AES256_GCM)
        self.primitive = handle.primitive(aead.Aead)

    def seal_run(self, pts):
        enc = self.primitive.encrypt
        return [enc(p, CONTEXT_BYTES) for p in pts]

    def open_run(self, cts):
        dec = self.primitive.decrypt
        return [dec(c, CONTEXT_BYTES) for c in cts]


class _Sink(io.BytesIO):
    """A BytesIO that keeps its contents when tink's stream closes it."""

    value = b""

    def close(self):
        if not self.closed:
            self.value = self.getvalue()
        super().close()


class TinkStreaming(Peer):
    name = "tink-streaming"

    def __init__(self):
        import tink
        from tink import streaming_aead

        streaming_aead.register()
        self.version = f"tink {_dist_version('tink')}"
        self.note = (
            "tink StreamingAead, AES256_GCM_HKDF_1MB key template (1 MiB segments), "
            "in-memory streams, whole message written/read in one call, associated data "
            "= two context pairs"
        )
        handle = tink.new_keyset_handle(streaming_aead.streaming_aead_key_templates.AES256_GCM_HKDF_1MB)
        self.primitive = handle.primitive(streaming_aead.StreamingAead)

    def seal_run(self, pts):
        new = self.primitive.new_encrypting_stream
        outs = []
        for p in pts:
            sink = _Sink()
            with new(sink, CONTEXT_BYTES) as s:
                s.write(p)
            outs.append(sink.value)
        return outs

    def open_run(self, cts):
        new = self.primitive.new_decrypting_stream
        outs = []
        for c in cts:
            with new(io.BytesIO(c), CONTEXT_BYTES) as s:
                outs.append(s.read())
        return outs


class AgeCli(Peer):
    """The `age` command on files; the whole process is timed."""

    name = "age"

    def __init__(self, tmp_root):
        self.age = shutil.which("age")
        keygen = shutil.which("age-keygen")
        if not self.age or not keygen:
            raise RuntimeError("`age`/`age-keygen` not on PATH (Debian package `age`)")
        os.makedirs(tmp_root, exist_ok=True)
        self.dir = tempfile.mkdtemp(prefix="age-", dir=tmp_root)
        self.identity = os.path.join(self.dir, "identity.txt")
        subprocess.run([keygen, "-o", self.identity], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.recipient = subprocess.run(
            [keygen, "-y", self.identity], check=True, capture_output=True, text=True
        ).stdout.strip()
        if not self.recipient.startswith("age1"):
            raise RuntimeError(f"age-keygen -y printed {self.recipient!r}")
        ver = subprocess.run([self.age, "--version"], capture_output=True, text=True).stdout.strip()
        self.version = f"age {ver or '?'}{_dpkg_version('age')}"
        self.note = (
            "`age -r <X25519 recipient> -o out in` / `age -d -i identity -o out in` on files "
            "in the page cache (target/peers/tmp); the whole command is timed, so every "
            "figure includes process start (see the 0 B lines)"
        )

    def _paths(self, i):
        return (os.path.join(self.dir, f"in-{i}.bin"),
                os.path.join(self.dir, f"ct-{i}.age"),
                os.path.join(self.dir, f"out-{i}.bin"))

    @staticmethod
    def _write(path, data):
        with open(path, "wb") as f:
            f.write(data)

    @staticmethod
    def _read(path):
        # age opens its -o file only when it has a byte to write: an empty plaintext
        # leaves no file behind.
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    @staticmethod
    def _rm(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def _run(self, argv):
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        return r.returncode

    def _seal_cmd(self, i):
        src, ct, _ = self._paths(i)
        return [self.age, "-r", self.recipient, "-o", ct, src]

    def _open_cmd(self, i):
        _, ct, out = self._paths(i)
        return [self.age, "-d", "-i", self.identity, "-o", out, ct]

    def _must(self, argv):
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if r.returncode != 0:
            raise CheckFailed(f"age: {' '.join(argv)} exited {r.returncode}: {r.stderr.strip()}")

    def seal_prep(self, pts):
        cmds = []
        for i, p in enumerate(pts):
            src, ct, _ = self._paths(i)
            self._write(src, p)
            self._rm(ct)
            cmds.append(self._seal_cmd(i))
        return cmds

    def seal_run(self, cmds):
        run = self._run
        return [run(c) for c in cmds]

    def seal_check(self, pts, outs):
        for i, rc in enumerate(outs):
            if rc != 0:
                self._must(self._seal_cmd(i))  # rerun to get the message
                raise CheckFailed(f"age seal exited {rc}")
        for i in range(len(pts)):
            self._rm(self._paths(i)[2])
            self._must(self._open_cmd(i))
        require_equal(pts, [self._read(self._paths(i)[2]) or b"" for i in range(len(pts))],
                      "age: seal output did not open")

    def open_prep(self, pts):
        cmds = []
        for i, p in enumerate(pts):
            src, ct, out = self._paths(i)
            self._write(src, p)
            self._rm(ct)
            self._must(self._seal_cmd(i))
            self._rm(out)
            cmds.append(self._open_cmd(i))
        return cmds

    def open_run(self, cmds):
        run = self._run
        return [run(c) for c in cmds]

    def open_check(self, pts, outs):
        for i, rc in enumerate(outs):
            if rc != 0:
                self._must(self._open_cmd(i))
                raise CheckFailed(f"age open exited {rc}")
        require_equal(pts, [self._read(self._paths(i)[2]) or b"" for i in range(len(pts))], "age: open")

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def _dist_version(dist):
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:  # noqa: BLE001 - version is informative only
        return "?"


def _dpkg_version(pkg):
    try:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True)
        return f" (Debian {r.stdout.strip()})" if r.returncode == 0 and r.stdout.strip() else ""
    except OSError:
        return ""


# --------------------------------------------------------------------------- timing


def measure(peer, op, size, m):
    """Returns a dict with the median seconds per operation and the counts."""
    prep = getattr(peer, f"{op}_prep")
    run = getattr(peer, f"{op}_run")
    check = getattr(peer, f"{op}_check")
    now = time.perf_counter

    def sample(k):
        pts = [os.urandom(size) for _ in range(k)]
        st = prep(pts)
        gc_was = gc.isenabled()
        gc.disable()
        try:
            t0 = now()
            outs = run(st)
            t1 = now()
        finally:
            if gc_was:
                gc.enable()
        check(pts, outs)
        return t1 - t0

    # Correctness before anything counts, then warm-up (estimating the time per op).
    sample(1)
    est = []
    t_end = now() + m.warmup
    while True:
        est.append(sample(1))
        if now() >= t_end:
            break
    per_op = statistics.median(est)

    if per_op >= m.sample_target:
        batch = 1
    else:
        batch = math.ceil(m.sample_target / max(per_op, 1e-9))
        batch = max(1, min(batch, m.max_batch_bytes // max(size, 1)))

    min_runs = m.min_runs_large if size >= m.large else m.min_runs
    samples = []
    timed = 0.0
    wall_end = now() + m.max_wall
    capped = False
    while True:
        t = sample(batch)
        samples.append(t / batch)
        timed += t
        if len(samples) >= min_runs and timed >= m.min_time:
            break
        if len(samples) >= m.max_runs or now() >= wall_end:
            capped = len(samples) < min_runs or timed < m.min_time
            break
    med = statistics.median(samples)
    return {
        "seconds": med,
        "runs": len(samples),
        "batch": batch,
        "ops": len(samples) * batch,
        "timed_s": round(timed, 4),
        "capped": capped,
    }


# --------------------------------------------------------------------------- main


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", default=os.environ.get("PEERS_QUICK") == "1",
                    help="smoke run: 1 KiB and 1 MiB, short durations (also PEERS_QUICK=1)")
    ap.add_argument("--out", default=os.path.join(REPO_ROOT, "target", "peers", "results-python.jsonl"),
                    help="JSON-lines output (default: target/peers/results-python.jsonl)")
    ap.add_argument("--tmp", default=os.path.join(REPO_ROOT, "target", "peers", "tmp"),
                    help="directory for age's files (default: target/peers/tmp)")
    ap.add_argument("--only", default="", help="comma-separated impl names to run (default: all)")
    ap.add_argument("--sizes", default="", help="comma-separated sizes in bytes (overrides the defaults)")
    ap.add_argument("--no-age", action="store_true", help="skip the age CLI")
    args = ap.parse_args()

    m = Method(args.quick)
    sizes = [int(s) for s in args.sizes.split(",") if s] or (SIZES_QUICK if args.quick else SIZES_FULL)
    only = {s for s in args.only.split(",") if s}
    affinity = sorted(os.sched_getaffinity(0))
    run_id = os.environ.get("PEERS_RUN_ID", "")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    if len(affinity) != 1:
        log(f"peers.py: WARNING: this process may run on CPUs {affinity}, not one core; "
            f"use benches/peers/run.sh (taskset -c 0) for the published figures")
    if args.quick:
        log("peers.py: --quick: smoke-run durations and sizes, not figures to publish")

    factories = [
        ("cryptography-aesgcm", CryptographyAesGcm),
        ("aws-encryption-sdk", AwsEncryptionSdk),
        ("tink-aead", TinkAead),
        ("tink-streaming", TinkStreaming),
    ]
    if not args.no_age:
        factories.append(("age", lambda: AgeCli(args.tmp)))
    factories = [(n, f) for n, f in factories if not only or n in only]

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp_out = args.out + ".partial"
    failures = []
    versions = {}
    with open(tmp_out, "w") as out:
        def emit(rec):
            out.write(json.dumps(rec, sort_keys=False) + "\n")
            out.flush()

        emit({
            "kind": "meta",
            "source": "benches/peers/peers.py",
            "run_id": run_id,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "quick": args.quick,
            "affinity": affinity,
            "cpu": cpu_model(),
            "python": platform.python_version(),
            "method": m.describe(),
        })

        for name, factory in factories:
            try:
                peer = factory()
            except Exception as e:  # noqa: BLE001 - reported, run continues
                log(f"peers.py: SKIPPED {name}: {type(e).__name__}: {e}")
                emit({"kind": "skip", "impl": name, "note": f"{type(e).__name__}: {e}"})
                if name != "age":  # age is best effort; the Python peers must be there
                    failures.append(f"{name}: could not be set up ({e})")
                continue
            versions[name] = peer.version
            emit({"kind": "version", "impl": name, "version": peer.version, "note": peer.note})
            try:
                cells = [(op, s) for s in sizes for op in ("seal", "open")]
                if isinstance(peer, AgeCli):
                    cells = [("seal", 0), ("open", 0)] + cells
                for op, size in cells:
                    try:
                        r = measure(peer, op, size, m)
                    except Exception as e:  # noqa: BLE001 - recorded, the other cells go on
                        what = "CHECK FAILED" if isinstance(e, CheckFailed) else f"ERROR ({type(e).__name__})"
                        log(f"peers.py: {what} {name} {op} {human_size(size)}: {e}")
                        failures.append(f"{name} {op} {human_size(size)}: {what}: {e}")
                        emit({"kind": "error", "impl": name, "op": op, "size": size,
                              "note": f"{what}: {e}"})
                        continue
                    gbps = size / r["seconds"] / 1e9
                    note = peer.note
                    if size == 0:
                        note = ("process start + empty file: the start cost included in every "
                                "age figure")
                    rec = {
                        "kind": "result",
                        "impl": name,
                        "op": op,
                        "size": size,
                        "gbps": round(gbps, 6),
                        "runs": r["runs"],
                        "note": note,
                        "seconds": r["seconds"],
                        "batch": r["batch"],
                        "ops": r["ops"],
                        "version": peer.version,
                        "quick": args.quick,
                        "affinity": affinity,
                    }
                    if r["capped"]:
                        rec["note"] += f"; stopped at the {m.max_wall:g} s wall-clock cap"
                    emit(rec)
                    per = r["seconds"]
                    per_s = f"{per * 1e6:.2f} µs" if per < 1e-3 else f"{per * 1e3:.2f} ms"
                    log(f"  {name:20s} {op:4s} {human_size(size):>7s}: "
                        f"{gbps:9.4f} GB/s  ({per_s}/op, median of {r['runs']} samples x {r['batch']})")
            finally:
                peer.close()

        if any(n == "age" for n, _ in factories):
            log("peers.py: age figures are whole `age` commands: they include process start "
                "(the 0 B lines are that cost alone)")

    os.replace(tmp_out, args.out)
    log(f"peers.py: wrote {os.path.relpath(args.out, os.getcwd())}")
    if failures:
        log("peers.py: FAILED:\n  " + "\n  ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
