#!/usr/bin/env python3
"""Using libcryptocore from Python with ctypes: seal and open a message, stream a file,
and see a wrong context refused.

    CRYPTOCORE_LIB=target/release/libcryptocore.so python3 ffi/examples/roundtrip.py

Run by the test command (ffi/tests/c_programs.rs) against the debug build.
"""
import ctypes
import os
import sys

lib = ctypes.CDLL(os.environ.get("CRYPTOCORE_LIB", "target/release/libcryptocore.so"))

OK, AUTHENTICATION_FAILED = 0, 3


class Buffer(ctypes.Structure):
    _fields_ = [("data", ctypes.POINTER(ctypes.c_uint8)), ("len", ctypes.c_size_t), ("capacity", ctypes.c_size_t)]

    def take(self):
        """The bytes, copied out; the library's copy is zeroized and freed."""
        out = ctypes.string_at(self.data, self.len) if self.len else b""
        lib.cryptocore_buffer_free(ctypes.byref(self))
        return out


class KV(ctypes.Structure):
    _fields_ = [("key", ctypes.c_char_p), ("value", ctypes.c_char_p)]


# Every signature declared, so ctypes passes size_t and pointers at full width.
P, S, U8P, KVP, BUFP = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.POINTER(KV), ctypes.POINTER(Buffer)
PP = ctypes.POINTER(ctypes.c_void_p)
SIGNATURES = {
    "cryptocore_version": (ctypes.c_char_p, []),
    "cryptocore_last_error": (ctypes.c_char_p, []),
    "cryptocore_buffer_free": (None, [BUFP]),
    "cryptocore_keyring_new": (ctypes.c_uint32, [PP]),
    "cryptocore_keyring_create_key": (ctypes.c_uint32, [P, ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint32)]),
    "cryptocore_keyring_free": (None, [P]),
    "cryptocore_envelope_from_keyring": (ctypes.c_uint32, [P, PP]),
    "cryptocore_envelope_free": (None, [P]),
    "cryptocore_encrypt": (ctypes.c_uint32, [P, ctypes.c_char_p, KVP, S, U8P, S, BUFP]),
    "cryptocore_decrypt": (ctypes.c_uint32, [P, KVP, S, U8P, S, BUFP]),
    "cryptocore_encryptor_new": (ctypes.c_uint32, [P, ctypes.c_char_p, KVP, S, PP]),
    "cryptocore_encryptor_update": (ctypes.c_uint32, [P, U8P, S, BUFP]),
    "cryptocore_encryptor_finish": (ctypes.c_uint32, [P, BUFP]),
    "cryptocore_encryptor_free": (None, [P]),
    "cryptocore_decryptor_new": (ctypes.c_uint32, [P, KVP, S, PP]),
    "cryptocore_decryptor_update": (ctypes.c_uint32, [P, U8P, S, BUFP]),
    "cryptocore_decryptor_finish": (ctypes.c_uint32, [P, BUFP]),
    "cryptocore_decryptor_free": (None, [P]),
}
for name, (restype, argtypes) in SIGNATURES.items():
    fn = getattr(lib, name)
    fn.restype, fn.argtypes = restype, argtypes


class CryptocoreError(Exception):
    pass


def check(status):
    if status != OK:
        raise CryptocoreError(status, lib.cryptocore_last_error().decode())


def context(pairs):
    arr = (KV * len(pairs))(*[KV(k.encode(), v.encode()) for k, v in pairs.items()])
    return arr, len(pairs)


def main():
    print("libcryptocore", lib.cryptocore_version().decode())
    ring, env = ctypes.c_void_p(), ctypes.c_void_p()
    check(lib.cryptocore_keyring_new(ctypes.byref(ring)))
    check(lib.cryptocore_keyring_create_key(ring, b"tenant-a/files", None))
    check(lib.cryptocore_envelope_from_keyring(ring, ctypes.byref(env)))
    ctx, n = context({"tenant": "a"})

    message = b"hello from Python"
    ct = Buffer()
    check(lib.cryptocore_encrypt(env, b"tenant-a/files", ctx, n, message, len(message), ctypes.byref(ct)))
    sealed = ct.take()
    pt = Buffer()
    check(lib.cryptocore_decrypt(env, ctx, n, sealed, len(sealed), ctypes.byref(pt)))
    assert pt.take() == message

    wrong, wn = context({"tenant": "b"})
    status = lib.cryptocore_decrypt(env, wrong, wn, sealed, len(sealed), ctypes.byref(pt))
    assert status == AUTHENTICATION_FAILED, status
    print("wrong context refused:", lib.cryptocore_last_error().decode())

    # Streaming: 3 MiB in 100 KiB pieces through the encryptor, then the decryptor.
    data = bytes(range(256)) * (3 * 4096)
    enc, dec = ctypes.c_void_p(), ctypes.c_void_p()
    check(lib.cryptocore_encryptor_new(env, b"tenant-a/files", ctx, n, ctypes.byref(enc)))
    out, piece = [], Buffer()
    for i in range(0, len(data), 100 * 1024):
        chunk = data[i:i + 100 * 1024]
        check(lib.cryptocore_encryptor_update(enc, chunk, len(chunk), ctypes.byref(piece)))
        out.append(piece.take())
    check(lib.cryptocore_encryptor_finish(enc, ctypes.byref(piece)))
    out.append(piece.take())
    lib.cryptocore_encryptor_free(enc)
    check(lib.cryptocore_decryptor_new(env, ctx, n, ctypes.byref(dec)))
    opened = []
    for chunk in out:
        check(lib.cryptocore_decryptor_update(dec, chunk, len(chunk), ctypes.byref(piece)))
        opened.append(piece.take())
    check(lib.cryptocore_decryptor_finish(dec, ctypes.byref(piece)))
    opened.append(piece.take())
    lib.cryptocore_decryptor_free(dec)
    assert b"".join(opened) == data
    print(f"streamed {len(data)} bytes through the encryptor and decryptor")

    lib.cryptocore_envelope_free(env)
    lib.cryptocore_keyring_free(ring)
    print("python example: ok")


if __name__ == "__main__":
    sys.exit(main())
