//! Whole-message open, in-place open, single-segment open, inspect and rewrap on arbitrary
//! bytes under real keys: never panics, in-place open agrees with open (same plaintext, or
//! an error that leaves the buffer either untouched or empty), and never returns plaintext for bytes that are not a message
//! sealed under those keys (the only valid inputs are the seeds and their exact copies).
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let setup = common::setup();
    let env = &setup.envelope;
    // The first byte picks the context, so wrong-context paths are exercised too.
    let Some((&pick, msg)) = data.split_first() else { return };
    let ctx = &setup.contexts[usize::from(pick) % setup.contexts.len()];
    let opened = env.open(ctx, msg);
    let mut in_place = msg.to_vec();
    match (&opened, env.open_in_place(ctx, &mut in_place)) {
        (Ok(all), Ok(())) => assert_eq!(all, &in_place),
        (Err(_), Err(_)) => {
            assert!(in_place.is_empty() || in_place == msg, "a failed open_in_place left a partial buffer")
        }
        (a, b) => panic!("open and open_in_place disagree: {:?} vs {:?}", a.as_ref().map(Vec::len), b),
    }
    let _ = env.inspect(msg);
    let _ = env.rewrap(msg);
    for index in [0u64, 1, 2, u64::from(pick)] {
        let seg = env.open_segment(ctx, msg, index);
        if opened.is_ok() {
            // Random access agrees with the whole-message open wherever both succeed.
            if let (Ok(all), Ok(seg)) = (&opened, &seg) {
                let size = env.inspect(msg).unwrap().segment_size().map_or(all.len().max(1), |s| s as usize);
                let start = index as usize * size;
                assert_eq!(&all[start..(start + size).min(all.len())], &seg[..]);
            }
        }
    }
});
