//! What the C ABI costs: sealing and opening a 1 KiB record through `cryptocore_encrypt` /
//! `cryptocore_decrypt` (argument checks, context conversion, panic boundary, the
//! library-owned output buffer and its zeroizing free) against calling crypto-core's
//! `Envelope` directly, same keyring, same provider. Results: `benches/RESULTS.md` ("C API").
#![allow(missing_docs, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use crypto_core::envelope::{EncryptionContext, Envelope};
use crypto_core::keys::Keyring;
use crypto_core::provider::LocalProvider;
use cryptocore::{cryptocore_buffer, cryptocore_kv, cryptocore_status};

const KEY: &str = "tenant-a/records";

fn overhead(c: &mut Criterion) {
    let ring = Arc::new(Keyring::in_memory());
    ring.create_key(KEY).expect("key");
    let direct = Envelope::new(LocalProvider::new(ring.clone()));
    let ctx: EncryptionContext = [("tenant", "a"), ("table", "orders")].into_iter().collect();
    let record = vec![0x42u8; 1024];

    // The same keyring behind a C-API envelope.
    let mut keyring = std::ptr::null_mut();
    let mut env = std::ptr::null_mut();
    // SAFETY: valid out-pointers; the keyring handle is live for the call.
    unsafe {
        assert_eq!(cryptocore::cryptocore_keyring_new(&mut keyring), cryptocore_status::CRYPTOCORE_OK);
        assert_eq!(
            cryptocore::cryptocore_keyring_create_key(keyring, c"tenant-a/records".as_ptr(), std::ptr::null_mut()),
            cryptocore_status::CRYPTOCORE_OK
        );
        assert_eq!(cryptocore::cryptocore_envelope_from_keyring(keyring, &mut env), cryptocore_status::CRYPTOCORE_OK);
    }
    let pairs = [
        cryptocore_kv { key: c"tenant".as_ptr(), value: c"a".as_ptr() },
        cryptocore_kv { key: c"table".as_ptr(), value: c"orders".as_ptr() },
    ];
    let sealed_c = {
        let mut out = cryptocore_buffer { data: std::ptr::null_mut(), len: 0, capacity: 0 };
        // SAFETY: live handles, valid pointers and lengths.
        let status = unsafe {
            cryptocore::cryptocore_encrypt(
                env,
                c"tenant-a/records".as_ptr(),
                pairs.as_ptr(),
                2,
                record.as_ptr(),
                record.len(),
                &mut out,
            )
        };
        assert_eq!(status, cryptocore_status::CRYPTOCORE_OK);
        // SAFETY: a buffer the library filled.
        let v = unsafe { std::slice::from_raw_parts(out.data, out.len) }.to_vec();
        // SAFETY: freed once.
        unsafe { cryptocore::cryptocore_buffer_free(&mut out) };
        v
    };
    let sealed_direct = direct.seal(KEY, &ctx, &record).expect("seal");

    let mut g = c.benchmark_group("ffi-1KiB");
    g.sample_size(60).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    g.bench_function("encrypt/crypto-core", |b| {
        b.iter(|| black_box(direct.seal(KEY, &ctx, black_box(&record)).expect("seal")))
    });
    g.bench_function("encrypt/c-api", |b| {
        b.iter(|| {
            let mut out = cryptocore_buffer { data: std::ptr::null_mut(), len: 0, capacity: 0 };
            // SAFETY: live handles, valid pointers and lengths; the buffer is freed once.
            unsafe {
                let s = cryptocore::cryptocore_encrypt(
                    env,
                    c"tenant-a/records".as_ptr(),
                    pairs.as_ptr(),
                    2,
                    record.as_ptr(),
                    record.len(),
                    &mut out,
                );
                black_box(s);
                cryptocore::cryptocore_buffer_free(&mut out);
            }
        })
    });
    g.bench_function("decrypt/crypto-core", |b| {
        b.iter(|| black_box(direct.open(&ctx, black_box(&sealed_direct)).expect("open")))
    });
    g.bench_function("decrypt/c-api", |b| {
        b.iter(|| {
            let mut out = cryptocore_buffer { data: std::ptr::null_mut(), len: 0, capacity: 0 };
            // SAFETY: as above.
            unsafe {
                let s =
                    cryptocore::cryptocore_decrypt(env, pairs.as_ptr(), 2, sealed_c.as_ptr(), sealed_c.len(), &mut out);
                black_box(s);
                cryptocore::cryptocore_buffer_free(&mut out);
            }
        })
    });
    g.finish();
    // SAFETY: live handles, freed once.
    unsafe {
        cryptocore::cryptocore_envelope_free(env);
        cryptocore::cryptocore_keyring_free(keyring);
    }
}

criterion_group!(benches, overhead);
criterion_main!(benches);
