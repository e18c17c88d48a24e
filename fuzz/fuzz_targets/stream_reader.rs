//! The streaming and random-access readers on arbitrary bytes: never panic, never return
//! more than the whole-message open would, and agree with it when both succeed.
#![no_main]

mod common;

use std::io::{Cursor, Read, Seek, SeekFrom};

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let setup = common::setup();
    let env = &setup.envelope;
    let Some((&pick, msg)) = data.split_first() else { return };
    let ctx = &setup.contexts[usize::from(pick) % setup.contexts.len()];
    let whole = env.open(ctx, msg);
    if let Ok(mut reader) = env.decrypting_reader(Cursor::new(msg), ctx) {
        let mut out = Vec::new();
        let streamed = reader.read_to_end(&mut out);
        match &whole {
            Ok(all) => {
                assert!(streamed.is_ok(), "stream failed where open succeeded");
                assert_eq!(&out, all);
            }
            // Bytes released before an error are a prefix of authenticated segments only:
            // never more than a valid message of this length could hold.
            Err(_) => assert!(streamed.is_err() || out.len() <= msg.len()),
        }
    }
    if let Ok(mut seekable) = env.seekable_decryptor(Cursor::new(msg), ctx) {
        let len = seekable.plaintext_len();
        let pos = u64::from(pick).min(len);
        seekable.seek(SeekFrom::Start(pos)).unwrap();
        let mut buf = vec![0u8; 64];
        if let (Ok(n), Ok(all)) = (seekable.read(&mut buf), &whole) {
            assert_eq!(&buf[..n], &all[pos as usize..pos as usize + n]);
        }
    }
});
