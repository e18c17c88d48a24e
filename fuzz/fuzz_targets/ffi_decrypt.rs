//! The C ABI's decrypt entry points on arbitrary bytes, called exactly as a C program
//! would (`cryptocore_decrypt`, the streaming decryptor fed in pieces, and
//! `cryptocore_data_key_decrypt`), over an envelope holding the published vectors' KEKs
//! (imported through the C API). Never panics or aborts, every call returns a status, a
//! failure leaves the output untouched, and the one-shot and streamed opens agree.
#![no_main]

mod common;

use std::ptr::null_mut;

use cryptocore::{cryptocore_buffer, cryptocore_envelope, cryptocore_kv, cryptocore_status};
use libfuzzer_sys::fuzz_target;

struct Env(*mut cryptocore_envelope);
// SAFETY: the envelope handle is thread-safe (cryptocore.h); it is never freed.
unsafe impl Send for Env {}
// SAFETY: as above.
unsafe impl Sync for Env {}

fn envelope() -> *const cryptocore_envelope {
    static ENV: std::sync::OnceLock<Env> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let (name, versions) = common::vector_key();
        let mut ring = null_mut();
        let mut env = null_mut();
        let name = std::ffi::CString::new(name).unwrap();
        // SAFETY: valid pointers and lengths; handles from this library.
        unsafe {
            assert_eq!(cryptocore::cryptocore_keyring_new(&mut ring), cryptocore_status::CRYPTOCORE_OK);
            for (i, m) in versions.iter().enumerate() {
                let s = if i == 0 {
                    cryptocore::cryptocore_keyring_import_key(ring, name.as_ptr(), m.as_ptr(), m.len())
                } else {
                    cryptocore::cryptocore_keyring_import_version(ring, name.as_ptr(), m.as_ptr(), m.len(), null_mut())
                };
                assert_eq!(s, cryptocore_status::CRYPTOCORE_OK);
            }
            assert_eq!(cryptocore::cryptocore_envelope_from_keyring(ring, &mut env), cryptocore_status::CRYPTOCORE_OK);
            cryptocore::cryptocore_keyring_free(ring);
        }
        Env(env)
    })
    .0
}

fn empty() -> cryptocore_buffer {
    cryptocore_buffer { data: null_mut(), len: 0, capacity: 0 }
}

fuzz_target!(|data: &[u8]| {
    let env = envelope();
    // The first byte picks the context (the vectors' one, or none) and the piece size.
    let Some((&pick, msg)) = data.split_first() else { return };
    let ctx = [
        cryptocore_kv { key: c"column".as_ptr(), value: c"ssn".as_ptr() },
        cryptocore_kv { key: c"table".as_ptr(), value: c"users".as_ptr() },
        cryptocore_kv { key: c"tenant".as_ptr(), value: c"a".as_ptr() },
    ];
    let n_ctx = if pick & 1 == 0 { 3 } else { 0 };
    let piece = usize::from(pick >> 1) + 1;

    // One-shot.
    let mut out = empty();
    // SAFETY: live envelope, valid pointers and lengths.
    let one = unsafe { cryptocore::cryptocore_decrypt(env, ctx.as_ptr(), n_ctx, msg.as_ptr(), msg.len(), &mut out) };
    let one_shot = (one == cryptocore_status::CRYPTOCORE_OK).then(|| {
        // SAFETY: a buffer the library filled (data NULL only when len is 0).
        let v =
            if out.len == 0 { Vec::new() } else { unsafe { std::slice::from_raw_parts(out.data, out.len) }.to_vec() };
        // SAFETY: freed once.
        unsafe { cryptocore::cryptocore_buffer_free(&mut out) };
        v
    });
    if one != cryptocore_status::CRYPTOCORE_OK {
        assert!(out.data.is_null() && out.len == 0, "output written on failure");
    }

    // Streamed in pieces.
    let mut dec = null_mut();
    // SAFETY: as above.
    assert_eq!(
        unsafe { cryptocore::cryptocore_decryptor_new(env, ctx.as_ptr(), n_ctx, &mut dec) },
        cryptocore_status::CRYPTOCORE_OK
    );
    let mut streamed = Vec::new();
    let mut ok = true;
    for chunk in msg.chunks(piece) {
        let mut part = empty();
        // SAFETY: live decryptor, valid input.
        let s = unsafe { cryptocore::cryptocore_decryptor_update(dec, chunk.as_ptr(), chunk.len(), &mut part) };
        if s != cryptocore_status::CRYPTOCORE_OK {
            ok = false;
            break;
        }
        if part.len > 0 {
            // SAFETY: a buffer the library filled.
            streamed.extend_from_slice(unsafe { std::slice::from_raw_parts(part.data, part.len) });
        }
        // SAFETY: freed once.
        unsafe { cryptocore::cryptocore_buffer_free(&mut part) };
    }
    if ok {
        let mut part = empty();
        // SAFETY: live decryptor.
        ok = unsafe { cryptocore::cryptocore_decryptor_finish(dec, &mut part) } == cryptocore_status::CRYPTOCORE_OK;
        if ok && part.len > 0 {
            // SAFETY: a buffer the library filled.
            streamed.extend_from_slice(unsafe { std::slice::from_raw_parts(part.data, part.len) });
        }
        // SAFETY: freed once.
        unsafe { cryptocore::cryptocore_buffer_free(&mut part) };
    }
    // SAFETY: freed once.
    unsafe { cryptocore::cryptocore_decryptor_free(dec) };
    match &one_shot {
        Some(pt) => assert!(ok && &streamed == pt, "the stream disagrees with the one-shot open"),
        None => assert!(!ok, "the stream opened what the one-shot open refused"),
    }

    // The same bytes as a wrapped data key.
    let mut key = empty();
    // SAFETY: as above.
    let s = unsafe { cryptocore::cryptocore_data_key_decrypt(env, msg.as_ptr(), msg.len(), &mut key) };
    if s == cryptocore_status::CRYPTOCORE_OK {
        assert_eq!(key.len, 32);
    } else {
        assert!(key.data.is_null());
    }
    // SAFETY: a library buffer or empty; freed once.
    unsafe { cryptocore::cryptocore_buffer_free(&mut key) };
});
