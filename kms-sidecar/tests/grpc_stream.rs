//! End to end against the real `kms-sidecar serve`: EncryptStream/DecryptStream of a
//! payload many times the message limit, their failure modes, and garbage protobuf
//! (the server answers with a status and keeps serving).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use kms_sidecar::client::connect_unix;
use kms_sidecar::grpc::pb;
use kms_sidecar::grpc::pb::kms_client::KmsClient;
use tonic::Code;
use tonic::transport::Channel;

mod common;
use common::Sidecar;

/// The sidecar under test runs with a 64 KiB request limit.
const LIMIT: usize = 65536;

fn ctx(tenant: &str) -> HashMap<String, String> {
    [("tenant".to_owned(), tenant.to_owned())].into_iter().collect()
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn encrypt_stream(
    kms: &mut KmsClient<Channel>,
    key: &str,
    context: HashMap<String, String>,
    data: &[u8],
    chunk: usize,
) -> Result<(Vec<u8>, u32), tonic::Status> {
    let mut messages = vec![pb::EncryptStreamRequest { key_name: key.into(), context, chunk: Vec::new() }];
    messages.extend(data.chunks(chunk).map(|c| pb::EncryptStreamRequest { chunk: c.to_vec(), ..Default::default() }));
    let mut responses = kms.encrypt_stream(tokio_stream::iter(messages)).await?.into_inner();
    let (mut out, mut version) = (Vec::new(), 0);
    while let Some(m) = responses.message().await? {
        if version == 0 {
            version = m.key_version;
        }
        out.extend_from_slice(&m.chunk);
    }
    Ok((out, version))
}

/// Returns the plaintext received before the call ended, and how it ended.
async fn decrypt_stream(
    kms: &mut KmsClient<Channel>,
    context: HashMap<String, String>,
    data: &[u8],
    chunk: usize,
) -> (Vec<u8>, Result<(), tonic::Status>) {
    let mut messages = data
        .chunks(chunk)
        .map(|c| pb::DecryptStreamRequest { context: HashMap::new(), chunk: c.to_vec() })
        .collect::<Vec<_>>();
    if messages.is_empty() {
        messages.push(pb::DecryptStreamRequest::default());
    }
    messages[0].context = context;
    let mut out = Vec::new();
    let mut responses = match kms.decrypt_stream(tokio_stream::iter(messages)).await {
        Ok(r) => r.into_inner(),
        Err(s) => return (out, Err(s)),
    };
    loop {
        match responses.message().await {
            Ok(Some(m)) => out.extend_from_slice(&m.chunk),
            Ok(None) => return (out, Ok(())),
            Err(s) => return (out, Err(s)),
        }
    }
}

#[test]
fn streams_round_trip_and_fail_closed() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(&dir.path().join("data"), &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut kms = KmsClient::new(connect_unix(sidecar.socket.clone()).await.unwrap());
        kms.create_key(pb::CreateKeyRequest { name: "t/stream".into() }).await.unwrap();

        // 3 MiB + a partial segment: 48 times the message limit, sent in odd-sized chunks.
        let data = pseudo_random(3 * 1024 * 1024 + 12345, 7);
        let (ct, version) = encrypt_stream(&mut kms, "t/stream", ctx("a"), &data, 60_001).await.unwrap();
        assert_eq!(version, 1);
        assert!(ct.len() > data.len());
        let (pt, end) = decrypt_stream(&mut kms, ctx("a"), &ct, 50_000).await;
        end.unwrap();
        assert!(pt == data, "DecryptStream returns the plaintext");

        // Empty payloads and a small one that unary Decrypt also opens (same format).
        let (empty_ct, _) = encrypt_stream(&mut kms, "t/stream", ctx("a"), b"", 10).await.unwrap();
        let (pt, end) = decrypt_stream(&mut kms, ctx("a"), &empty_ct, 7).await;
        end.unwrap();
        assert!(pt.is_empty());
        let (small_ct, _) = encrypt_stream(&mut kms, "t/stream", ctx("a"), b"hello stream", 5).await.unwrap();
        let dec = kms.decrypt(pb::DecryptRequest { ciphertext: small_ct, context: ctx("a") }).await.unwrap();
        assert_eq!(dec.into_inner().plaintext, b"hello stream");

        // After a rotation, new streams use v2 and the v1 stream still opens.
        kms.rotate_key(pb::KeyRef { name: "t/stream".into() }).await.unwrap();
        let (_, v2) = encrypt_stream(&mut kms, "t/stream", ctx("a"), b"x", 1).await.unwrap();
        assert_eq!(v2, 2);
        let (pt, end) = decrypt_stream(&mut kms, ctx("a"), &ct, 65_000).await;
        end.unwrap();
        assert!(pt == data);

        // Wrong context: refused before any plaintext, coarse INVALID_ARGUMENT.
        let (pt, end) = decrypt_stream(&mut kms, ctx("b"), &ct, 50_000).await;
        assert_eq!(end.unwrap_err().code(), Code::InvalidArgument);
        assert!(pt.is_empty());

        // Truncated at a segment boundary and mid-segment, and a flipped bit: the call
        // ends in an error (never OK), whatever was streamed before.
        let segment = 64 * 1024 + 16;
        let header_len = ct.len() - (data.len() + data.len().div_ceil(64 * 1024) * 16);
        for cut in [header_len + 2 * segment, ct.len() - 100, ct.len() - 1] {
            let (pt, end) = decrypt_stream(&mut kms, ctx("a"), &ct[..cut], 50_000).await;
            assert_eq!(end.unwrap_err().code(), Code::InvalidArgument, "cut at {cut}");
            assert!(pt.len() < data.len());
        }
        let mut flipped = ct.clone();
        flipped[header_len + 5 * segment + 77] ^= 0x10;
        let (pt, end) = decrypt_stream(&mut kms, ctx("a"), &flipped, 50_000).await;
        assert_eq!(end.unwrap_err().code(), Code::InvalidArgument);
        assert!(pt.len() <= 5 * 64 * 1024, "nothing of the bad segment or after it is released");
        assert!(pt[..] == data[..pt.len()]);

        // Garbage instead of a ciphertext, and nothing at all.
        let (_, end) = decrypt_stream(&mut kms, ctx("a"), &pseudo_random(200_000, 3), 50_000).await;
        assert_eq!(end.unwrap_err().code(), Code::InvalidArgument);
        let (_, end) = decrypt_stream(&mut kms, ctx("a"), b"", 1).await;
        assert_eq!(end.unwrap_err().code(), Code::InvalidArgument);

        // Bad requests: unknown key, no key, chunk over the limit, key repeated later.
        let e = encrypt_stream(&mut kms, "t/none", ctx("a"), b"x", 1).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        let e = encrypt_stream(&mut kms, "", ctx("a"), b"x", 1).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        let e = encrypt_stream(&mut kms, "t/stream", ctx("a"), &vec![0u8; LIMIT + 1], LIMIT + 1).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted);
        let e = kms
            .encrypt_stream(tokio_stream::iter(vec![
                pb::EncryptStreamRequest { key_name: "t/stream".into(), ..Default::default() },
                pb::EncryptStreamRequest { key_name: "t/stream".into(), chunk: b"x".to_vec(), ..Default::default() },
            ]))
            .await;
        let e = match e {
            Err(e) => e,
            Ok(r) => {
                let mut s = r.into_inner();
                loop {
                    match s.message().await {
                        Ok(Some(_)) => {}
                        Ok(None) => panic!("a key name in a later message must fail the call"),
                        Err(e) => break e,
                    }
                }
            }
        };
        assert_eq!(e.code(), Code::InvalidArgument);
        let e = kms.encrypt_stream(tokio_stream::iter(Vec::new())).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);

        // A disabled key refuses both directions.
        kms.disable_key(pb::KeyRef { name: "t/stream".into() }).await.unwrap();
        let e = encrypt_stream(&mut kms, "t/stream", ctx("a"), b"x", 1).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        let (_, end) = decrypt_stream(&mut kms, ctx("a"), &ct, 50_000).await;
        assert_eq!(end.unwrap_err().code(), Code::FailedPrecondition);
    });
    sidecar.stop();
}

/// Messages whose bytes are not a valid encoding of the request type.
#[derive(Clone, PartialEq, prost::Message)]
struct WrongWireType {
    /// Field 1 of EncryptRequest is a string; a varint there cannot decode.
    #[prost(uint64, tag = "1")]
    key_name: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct BadUtf8 {
    #[prost(bytes = "vec", tag = "1")]
    key_name: Vec<u8>,
}

#[test]
fn garbage_protobuf_gets_a_status_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(&dir.path().join("data"), &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let channel = connect_unix(sidecar.socket.clone()).await.unwrap();
        let path = tonic::codegen::http::uri::PathAndQuery::from_static("/kms.v1.Kms/Encrypt");
        for _ in 0..3 {
            let mut raw = tonic::client::Grpc::new(channel.clone());
            raw.ready().await.unwrap();
            let e = raw
                .unary::<_, pb::EncryptResponse, _>(
                    tonic::Request::new(WrongWireType { key_name: 42 }),
                    path.clone(),
                    tonic_prost::ProstCodec::default(),
                )
                .await
                .unwrap_err();
            // gRPC's convention for a request that does not parse (statuscodes.md:
            // "Error parsing request proto": INTERNAL), produced by the transport.
            assert_eq!(e.code(), Code::Internal, "{e:?}");
            let mut raw = tonic::client::Grpc::new(channel.clone());
            raw.ready().await.unwrap();
            let e = raw
                .unary::<_, pb::EncryptResponse, _>(
                    tonic::Request::new(BadUtf8 { key_name: vec![0xff, 0xfe, b'k'] }),
                    path.clone(),
                    tonic_prost::ProstCodec::default(),
                )
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::Internal, "{e:?}");
        }
        // Still serving, on the same connection and on a new one.
        let mut kms = KmsClient::new(channel);
        kms.create_key(pb::CreateKeyRequest { name: "t/after-garbage".into() }).await.unwrap();
        let mut kms = KmsClient::new(connect_unix(sidecar.socket.clone()).await.unwrap());
        kms.describe_key(pb::KeyRef { name: "t/after-garbage".into() }).await.unwrap();
    });
    sidecar.stop();
}

#[test]
fn streams_are_bounded_in_number_and_idle_time() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar =
        Sidecar::start(&dir.path().join("data"), &["--max-concurrent-streams", "2", "--stream-idle-timeout", "700ms"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut kms = KmsClient::new(connect_unix(sidecar.socket.clone()).await.unwrap());
        kms.create_key(pb::CreateKeyRequest { name: "t/limits".into() }).await.unwrap();

        // Two clients open a stream, send the first message and then go quiet (their
        // request streams stay open).
        let mut idle_senders = Vec::new();
        let mut idle_calls = Vec::new();
        for _ in 0..2 {
            let (tx, rx) = tokio::sync::mpsc::channel::<pb::EncryptStreamRequest>(1);
            tx.send(pb::EncryptStreamRequest { key_name: "t/limits".into(), ..Default::default() }).await.unwrap();
            let call = kms.encrypt_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap();
            idle_senders.push(tx);
            idle_calls.push(call.into_inner());
        }
        // A third is refused while both slots are taken.
        let e = encrypt_stream(&mut kms, "t/limits", ctx("a"), b"x", 1).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        // Unary RPCs are not affected.
        kms.encrypt(pb::EncryptRequest { key_name: "t/limits".into(), plaintext: b"x".to_vec(), context: ctx("a") })
            .await
            .unwrap();

        // The idle calls end with DEADLINE_EXCEEDED after the idle timeout...
        let started = std::time::Instant::now();
        for mut call in idle_calls {
            let end = loop {
                // Bounded: a broken idle timeout fails the test instead of hanging it.
                let next = tokio::time::timeout(std::time::Duration::from_secs(10), call.message()).await;
                match next.expect("idle stream still open after 10 s") {
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("an idle stream must not end OK"),
                    Err(e) => break e,
                }
            };
            assert_eq!(end.code(), Code::DeadlineExceeded, "{end:?}");
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        // ...which frees their slots.
        let (ct, _) = encrypt_stream(&mut kms, "t/limits", ctx("a"), b"after", 2).await.unwrap();
        let (pt, end) = decrypt_stream(&mut kms, ctx("a"), &ct, 3).await;
        end.unwrap();
        assert_eq!(pt, b"after");
        drop(idle_senders);
    });
    // Shutdown is not held up by streams (none left running).
    sidecar.stop();
}
