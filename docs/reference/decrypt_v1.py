#!/usr/bin/env python3
"""Independent decryptor for the cryptocore ciphertext format v1.

Written from ``docs/format.md`` alone (not from the Rust sources), to show that the
document is sufficient to decrypt. Uses only the Python standard library and the
``cryptography`` package (AES-GCM and HKDF).

Usage::

    python3 docs/reference/decrypt_v1.py crypto-core/tests/vectors/envelope-v1.json

prints one line per vector and ``N passed, M failed``; exits 1 if any vector failed.

Section numbers in comments (§n) refer to docs/format.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import struct
import sys
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
except ImportError:  # pragma: no cover
    sys.exit("decrypt_v1.py needs the 'cryptography' package: pip install cryptography")

# ---- constants (§4, §6, §8, §12) ------------------------------------------------------

MAGIC = b"CCEF"
VERSION_1 = 0x01
SUITE_1 = 0x01
FORM_STREAM = 0x01
FORM_COMPACT = 0x02
SALT_LEN = 32
COMMITMENT_LEN = 32
TAG_LEN = 16
MIN_SEGMENT_SIZE = 16
MAX_SEGMENT_SIZE = 16 * 1024 * 1024
MAX_COMPACT_PLAINTEXT = MAX_SEGMENT_SIZE
MAX_WRAPPED_KEYS = 16
MAX_PROVIDER_ID_LEN = 64
MAX_BLOB_LEN = 4096
MAX_SEGMENTS = 1 << 32
MAX_CONTEXT_ENTRIES = 256
MAX_CONTEXT_LEN = 16 * 1024

# HKDF info labels (§6 table). The two message labels are at most 22 bytes, so each
# 32-byte Expand is one HMAC over a single SHA-256 block.
LABEL_MESSAGE_KEY = b"cryptocore/v1/key"
LABEL_COMMITMENT = b"cryptocore/v1/commit"
LABEL_LOCAL_WRAP = b"cryptocore/v1/local-wrap"
NONCE_PREFIX_LEN = 7

LOCAL_BLOB_V1 = 0x01
LOCAL_BLOB_LEN = 65
LOCAL_SALT_LEN = 16


class EnvelopeError(Exception):
    """A rejection, named after the Rust ``EnvelopeError`` variant (§17)."""

    def __init__(self, variant: str, detail: str = "", index: Optional[int] = None):
        self.variant = variant
        self.detail = detail
        self.index = index
        super().__init__(self.name() + (f" ({detail})" if detail else ""))

    def name(self) -> str:
        """``Variant`` or ``SegmentAuthentication:N`` as in the vectors file."""
        return f"{self.variant}:{self.index}" if self.index is not None else self.variant


# ---- primitives (§2) ------------------------------------------------------------------


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    return HKDFExpand(algorithm=hashes.SHA256(), length=length, info=info).derive(prk)


def hkdf(salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def gcm_open(key: bytes, nonce: bytes, aad: bytes, sealed: bytes) -> Optional[bytes]:
    assert len(key) == 32 and len(nonce) == 12
    if len(sealed) < TAG_LEN:
        return None
    try:
        return AESGCM(key).decrypt(nonce, sealed, aad)
    except InvalidTag:
        return None


# ---- header (§4, §10 steps 1-9) -------------------------------------------------------


@dataclass
class WrappedKey:
    provider_id: str
    key_name: str
    key_version: int
    blob: bytes


@dataclass
class Header:
    form: int
    segment_size: Optional[int]  # None for the compact form
    salt: bytes
    entries: List[WrappedKey]
    commitment: bytes
    immutable_prefix: bytes
    header_len: int


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise EnvelopeError("Truncated", "input ends inside the header")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack(">H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]


_KEY_NAME_CHARS = re.compile(rb"\A[A-Za-z0-9._/-]+\Z")


def _valid_provider_id(pid: bytes) -> bool:
    return 1 <= len(pid) <= MAX_PROVIDER_ID_LEN and all(0x21 <= b <= 0x7E for b in pid)


def _valid_key_name(name: bytes) -> bool:
    if not 1 <= len(name) <= 255 or not _KEY_NAME_CHARS.match(name):
        return False
    return all(part not in (b"", b".", b"..") for part in name.split(b"/"))


def parse_header(message: bytes) -> Header:
    r = _Reader(message)
    # 1. magic
    if r.take(4) != MAGIC:
        raise EnvelopeError("Malformed", "bad magic")
    # 2. version
    version = r.u8()
    if version != VERSION_1:
        raise EnvelopeError("UnsupportedVersion", str(version))
    # 3. suite
    suite = r.u8()
    if suite != SUITE_1:
        raise EnvelopeError("UnsupportedSuite", hex(suite))
    # 4. form (+ segment size)
    form = r.u8()
    if form == FORM_STREAM:
        segment_size = r.u32()
        if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
            raise EnvelopeError("InvalidSegmentSize", str(segment_size))
    elif form == FORM_COMPACT:
        segment_size = None
    else:
        raise EnvelopeError("UnsupportedForm", hex(form))
    # 5. salt
    salt = r.take(SALT_LEN)
    immutable_prefix = message[: r.pos]
    # 6. count
    count = r.u8()
    if not 1 <= count <= MAX_WRAPPED_KEYS:
        raise EnvelopeError("Malformed", "wrapped key count must be 1 to 16")
    # 7. entries
    raw: List[Tuple[bytes, bytes, int, bytes]] = []
    for _ in range(count):
        pid = r.take(r.u8())
        _utf8(pid, "provider id")
        name = r.take(r.u8())
        _utf8(name, "key name")
        key_version = r.u32()
        blob_len = r.u16()
        if blob_len > MAX_BLOB_LEN:
            raise EnvelopeError("Malformed", "blob longer than 4096 bytes")
        blob = r.take(blob_len)
        raw.append((pid, name, key_version, blob))
    # 8. entry validation, after all entries are read
    for pid, name, key_version, blob in raw:
        if not _valid_provider_id(pid):
            raise EnvelopeError("Malformed", "invalid provider id")
        if not _valid_key_name(name):
            raise EnvelopeError("Malformed", "invalid key name")
        if not 1 <= len(blob) <= MAX_BLOB_LEN:
            raise EnvelopeError("Malformed", "blob must be 1 to 4096 bytes")
        if key_version == 0:
            raise EnvelopeError("Malformed", "key version 0")
    # 9. commitment
    commitment = r.take(COMMITMENT_LEN)
    entries = [WrappedKey(p.decode(), n.decode(), v, b) for p, n, v, b in raw]
    return Header(form, segment_size, salt, entries, commitment, immutable_prefix, r.pos)


def _utf8(b: bytes, what: str) -> None:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        raise EnvelopeError("Malformed", f"{what} is not UTF-8") from None


# ---- encryption context (§5) ----------------------------------------------------------


def canonical_context(context: Mapping[str, str]) -> bytes:
    if len(context) > MAX_CONTEXT_ENTRIES:
        raise EnvelopeError("InvalidContext", "more than 256 entries")
    items = sorted(((k.encode("utf-8"), v.encode("utf-8")) for k, v in context.items()), key=lambda kv: kv[0])
    out = bytearray(struct.pack(">H", len(items)))
    for k, v in items:
        if not k:
            raise EnvelopeError("InvalidContext", "empty key")
        for s in (k, v):
            if len(s) > 0xFFFF:
                raise EnvelopeError("InvalidContext", "entry too long")
            out += struct.pack(">H", len(s)) + s
    if len(out) > MAX_CONTEXT_LEN:
        raise EnvelopeError("InvalidContext", "encoding longer than 16 KiB")
    return bytes(out)


# ---- local provider (§8) --------------------------------------------------------------

# Keyring: provider_id -> key_name -> version -> KEK bytes (None = destroyed).
Keyring = Dict[str, Dict[str, Dict[int, Optional[bytes]]]]


class _UnwrapError(Exception):
    pass


def local_unwrap(kek: bytes, w: WrappedKey) -> bytes:
    blob = w.blob
    if len(blob) != LOCAL_BLOB_LEN or blob[0] != LOCAL_BLOB_V1:
        raise _UnwrapError("UnwrapFailed")
    wrap_salt = blob[1 : 1 + LOCAL_SALT_LEN]
    sealed = blob[1 + LOCAL_SALT_LEN :]
    okm = hkdf(wrap_salt, kek, LABEL_LOCAL_WRAP, 44)
    wrap_key, wrap_nonce = okm[:32], okm[32:44]
    pid, name = w.provider_id.encode(), w.key_name.encode()
    aad = bytes([len(pid)]) + pid + bytes([len(name)]) + name + struct.pack(">I", w.key_version)
    data_key = gcm_open(wrap_key, wrap_nonce, aad, sealed)
    if data_key is None:
        raise _UnwrapError("UnwrapFailed")
    return data_key


def unwrap_data_key(entries: List[WrappedKey], keyring: Keyring) -> bytes:
    """§8.1: entries in header order; skip unknown providers; first success wins."""
    last: Optional[str] = None
    for w in entries:
        provider = keyring.get(w.provider_id)
        if provider is None:
            continue
        try:
            versions = provider.get(w.key_name)
            if versions is None:
                raise _UnwrapError(f"key {w.key_name!r} not found")
            if w.key_version not in versions:
                raise _UnwrapError(f"version {w.key_version} of {w.key_name!r} not found")
            kek = versions[w.key_version]
            if kek is None:
                raise _UnwrapError(f"version {w.key_version} of {w.key_name!r} destroyed")
            return local_unwrap(kek, w)
        except _UnwrapError as e:
            last = str(e)
    if last is None:
        last = "NoMatchingProvider: " + ", ".join(w.provider_id for w in entries)
    raise EnvelopeError("Key", last)


# ---- derivation (§6) and segments (§7) ------------------------------------------------


@dataclass
class MessageKeys:
    message_key: bytes
    nonce_prefix: bytes
    commitment: bytes
    digest: bytes
    prk: bytes

    def nonce(self, index: int, last: bool) -> bytes:
        """§7.1: salt[0..7] ‖ u32be(index) ‖ last."""
        return self.nonce_prefix + struct.pack(">I", index) + (b"\x01" if last else b"\x00")


def derive(data_key: bytes, immutable_prefix: bytes, salt: bytes, ctx: bytes) -> MessageKeys:
    """§6: digest, PRK, message key and commitment; the nonce prefix is salt[0..7]."""
    digest = hashlib.sha256(immutable_prefix + ctx).digest()
    prk = hkdf_extract(salt, data_key)
    message_key = hkdf_expand(prk, LABEL_MESSAGE_KEY + digest, 32)
    commitment = hkdf_expand(prk, LABEL_COMMITMENT + digest, 32)
    nonce_prefix = salt[:NONCE_PREFIX_LEN]  # public, not derived
    return MessageKeys(message_key, nonce_prefix, commitment, digest, prk)


def geometry(header: Header, body_len: int) -> Tuple[int, int]:
    """(segment count n, stride) of a body of body_len bytes (§7.3, §7.4)."""
    if header.segment_size is None:
        if body_len < TAG_LEN:
            raise EnvelopeError("Truncated", "compact body shorter than a tag")
        if body_len - TAG_LEN > MAX_COMPACT_PLAINTEXT:
            raise EnvelopeError("Malformed", "compact body longer than 16 MiB")
        return 1, body_len
    stride = header.segment_size + TAG_LEN
    full, rem = divmod(body_len, stride)
    if body_len == 0:
        raise EnvelopeError("Truncated", "empty body")
    if rem == 0:
        n = full
    elif rem < TAG_LEN:
        raise EnvelopeError("Truncated", "fewer than 16 bytes after the last boundary")
    else:
        n = full + 1
    if n > MAX_SEGMENTS:
        raise EnvelopeError("Malformed", "more than 2^32 segments")
    return n, stride


def open_segment(keys: MessageKeys, index: int, expect_last: bool, sealed: bytes) -> bytes:
    """The §10 rule: try expect_last, then the opposite flag to tell truncation/trailing data."""
    pt = gcm_open(keys.message_key, keys.nonce(index, expect_last), b"", sealed)
    if pt is not None:
        return pt
    if gcm_open(keys.message_key, keys.nonce(index, not expect_last), b"", sealed) is not None:
        raise EnvelopeError("Truncated" if expect_last else "TrailingData")
    raise EnvelopeError("SegmentAuthentication", index=index)


def open_message(message: bytes, context: Mapping[str, str], keyring: Keyring) -> Tuple[bytes, bytes]:
    """Full §10 algorithm. Returns (plaintext, data_key)."""
    header = parse_header(message)  # steps 1-9
    data_key = unwrap_data_key(header.entries, keyring)  # step 10
    ctx = canonical_context(context)  # step 11
    keys = derive(data_key, header.immutable_prefix, header.salt, ctx)  # step 12
    if not hmac.compare_digest(keys.commitment, header.commitment):
        raise EnvelopeError("HeaderAuthentication")
    body = message[header.header_len :]
    n, stride = geometry(header, len(body))  # step 13
    parts = []
    for i in range(n):  # step 14
        parts.append(open_segment(keys, i, i == n - 1, body[i * stride : (i + 1) * stride]))
    return b"".join(parts), data_key  # step 15


# ---- vectors --------------------------------------------------------------------------


def keyring_from_vector(v: dict) -> Keyring:
    ring: Keyring = {}
    for k in v["keys"]:
        versions = ring.setdefault(k["provider_id"], {}).setdefault(k["name"], {})
        for ver in k["versions"]:
            versions[int(ver["version"])] = None if ver.get("destroyed") else bytes.fromhex(ver["material"])
    return ring


def run_vector(v: dict) -> Tuple[bool, str]:
    ct = bytes.fromhex(v["ciphertext"])
    try:
        pt, data_key = open_message(ct, v["context"], keyring_from_vector(v))
    except EnvelopeError as e:
        if v["result"] == "invalid":
            if e.name() == v["expected_error"]:
                return True, f"rejected: {e}"
            return False, f"rejected with {e.name()}, expected {v['expected_error']} ({e})"
        return False, f"valid vector rejected: {e}"
    if v["result"] != "valid":
        return False, f"invalid vector opened (expected {v['expected_error']})"
    if pt != bytes.fromhex(v["plaintext"]):
        return False, "plaintext mismatch"
    if v.get("data_key") and data_key != bytes.fromhex(v["data_key"]):
        return False, "unwrapped data key differs from the vector's data_key"
    return True, f"opened {len(pt)} bytes"


def main(argv: List[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} VECTORS.json", file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        doc = json.load(f)
    passed = failed = 0
    for v in doc["vectors"]:
        try:
            ok, why = run_vector(v)
        except Exception as e:  # a bug in this script or a malformed vector: count it as a failure
            ok, why = False, f"error: {type(e).__name__}: {e}"
        label = f"#{v.get('id', '?')} {v.get('name', '')}"
        print(f"{'PASS' if ok else 'FAIL'} {label}: {why}")
        if ok:
            passed += 1
        else:
            failed += 1
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
