//! The CPU engine: all cores, through rayon's global pool.

use rayon::prelude::*;

use crate::envelope::{EncryptionContext, Envelope, EnvelopeError, Geometry, MessageSealer};
use crate::provider::KeyProvider;

/// Seals `plaintext` as one message on all cores; identical bytes to `sealer.seal`.
pub fn seal(sealer: &MessageSealer, plaintext: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let mut out = Vec::new();
    seal_into(sealer, plaintext, &mut out)?;
    Ok(out)
}

/// [`seal`] into `out`, reusing its allocation (see
/// [`crate::envelope::Envelope::seal_into`]): for large objects, faulting in fresh pages
/// can cost more than the encryption itself.
pub fn seal_into(sealer: &MessageSealer, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), EnvelopeError> {
    let geometry = Geometry::for_plaintext(sealer.header().segment_size().map(|s| s as usize), plaintext.len())?;
    let header = sealer.header_bytes();
    crate::envelope::resize_reusing(out, header.len() + geometry.body_len(plaintext.len()));
    out[..header.len()].copy_from_slice(header);
    let n = geometry.segments;
    let keys = sealer.keys();
    let body = &mut out[header.len()..];
    if plaintext.is_empty() {
        keys.seal_segment(0, true, &[], body);
        return Ok(());
    }
    body.par_chunks_mut(geometry.stride())
        .zip(plaintext.par_chunks(geometry.segment_size))
        .enumerate()
        .for_each(|(i, (sealed, pt))| keys.seal_segment(i as u32, i as u64 + 1 == n, pt, sealed));
    Ok(())
}

/// Opens a whole message on all cores. All-or-nothing like
/// [`Envelope::open`]: on any failure the output is zeroized and the first failing
/// segment's error is returned.
pub fn open<P: KeyProvider>(
    envelope: &Envelope<P>,
    context: &EncryptionContext,
    ciphertext: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let (keys, body, geometry) = envelope.open_parts(context, ciphertext)?;
    let mut out = vec![0u8; geometry.plaintext_len(body.len())];
    let n = geometry.segments;
    let result = if out.is_empty() || n == 1 {
        crate::envelope::open_body_into(&keys, &geometry, body, &mut out)
    } else {
        let results: Vec<Result<(), EnvelopeError>> = body
            .par_chunks(geometry.stride())
            .zip(out.par_chunks_mut(geometry.segment_size))
            .enumerate()
            .map(|(i, (sealed, pt))| keys.open_segment_checked(i as u32, i as u64 + 1 == n, sealed, pt))
            .collect();
        results.into_iter().find(Result::is_err).unwrap_or(Ok(()))
    };
    if let Err(e) = result {
        zeroize::Zeroize::zeroize(&mut out);
        return Err(e);
    }
    Ok(out)
}
