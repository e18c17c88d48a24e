//! The AWS KMS provider (feature `aws-kms`) against a local moto server (`tests/moto.sh`
//! starts one and exports `KMS_TEST_AWS_ENDPOINT`), plus small canned HTTP servers for
//! what moto does not emulate (`DisabledException`, `IncorrectKeyException`, throttling,
//! a server that never answers).
//!
//! Without `KMS_TEST_AWS_ENDPOINT` the moto tests are skipped loudly, except under
//! `CI=true`, where that is a failure. Without the feature there is nothing to test; a
//! note says so.
//!
//! Where moto differs from AWS: it does not refuse `Encrypt`/`Decrypt` under a disabled key
//! (so the disabled-key test uses `DescribeKey` through `check()` with moto, and a canned
//! `DisabledException` for the error path), and it answers a `Decrypt` whose `KeyId` is not
//! the blob's key with `AccessDeniedException` where AWS answers `IncorrectKeyException`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[cfg(not(feature = "aws-kms"))]
#[test]
fn skipped_without_the_aws_kms_feature() {
    eprintln!(
        "\n*** SKIPPED: AWS KMS tests: crypto-core was built without feature `aws-kms` \
         (use --features aws-kms or --all-features) ***\n"
    );
}

#[cfg(feature = "aws-kms")]
mod aws {
    use std::collections::BTreeMap;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, OnceLock};
    use std::time::{Duration, Instant};

    use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
    use crypto_core::aws_kms::*;
    use crypto_core::envelope::{EncryptionContext, Envelope, EnvelopeError};
    use crypto_core::keys::Keyring;
    use crypto_core::provider::{KeyProvider, LocalProvider, MultiProvider, ProviderError};
    use crypto_core::secret::DataKey;

    const REGION: &str = "us-east-1";
    const ACCESS_KEY_ID: &str = "AKIDTESTONLY";
    const SECRET: &str = "s3cr3t-test-only-never-printed";
    const SESSION_TOKEN: &str = "t0ken-test-only-never-printed";

    // ---- moto fixtures ------------------------------------------------------------------------

    /// The moto endpoint, or `None` (after a loud note) when the tests should skip.
    fn moto_endpoint() -> Option<String> {
        match std::env::var("KMS_TEST_AWS_ENDPOINT") {
            Ok(url) if !url.is_empty() => Some(url),
            _ => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "KMS_TEST_AWS_ENDPOINT is required in CI (start moto with: eval \"$(bash tests/moto.sh)\")"
                );
                eprintln!(
                    "\n*** SKIPPED: AWS KMS tests against moto: KMS_TEST_AWS_ENDPOINT is not set \
                     (start moto with: eval \"$(bash tests/moto.sh)\") ***\n"
                );
                None
            }
        }
    }

    fn runtime() -> &'static tokio::runtime::Runtime {
        static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
        RT.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap())
    }

    /// A plain SDK client for test set-up (creating and disabling keys).
    fn admin(endpoint: &str) -> aws_sdk_kms::Client {
        let config = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(endpoint)
            .credentials_provider(Credentials::new(ACCESS_KEY_ID, SECRET, None, None, "test"))
            .build();
        aws_sdk_kms::Client::from_conf(config)
    }

    /// Creates a symmetric encryption key in moto; returns its key id.
    fn create_key(endpoint: &str) -> String {
        let out = runtime().block_on(admin(endpoint).create_key().description("crypto-core test").send()).unwrap();
        out.key_metadata().unwrap().key_id().to_owned()
    }

    fn config(endpoint: &str, key_id: &str) -> AwsKmsConfig {
        AwsKmsConfig::new(key_id)
            .with_region(REGION)
            .with_endpoint_url(endpoint)
            .with_credentials(AwsCredentials::new(ACCESS_KEY_ID, SECRET))
    }

    fn client(endpoint: &str, key_id: &str) -> AwsKmsClient {
        AwsKmsClient::new(config(endpoint, key_id)).unwrap()
    }

    fn ctx(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    // ---- client -------------------------------------------------------------------------------

    #[test]
    fn client_round_trip_and_check() {
        let Some(ep) = moto_endpoint() else { return };
        let key = create_key(&ep);
        let c = client(&ep, &key);
        assert_eq!(c.key_id(), key);
        assert_eq!(c.region(), REGION);
        c.check().unwrap();

        let context = ctx(&[("tenant", "a"), ("purpose", "test")]);
        let blob = c.encrypt(b"attack at dawn", &context).unwrap();
        assert!(!blob.windows(6).any(|w| w == b"attack"), "blob must not hold the plaintext");
        assert_eq!(c.decrypt(&blob, &context).unwrap().as_slice(), b"attack at dawn");

        // Also by alias.
        runtime()
            .block_on(admin(&ep).create_alias().alias_name("alias/cc-round-trip").target_key_id(&key).send())
            .unwrap();
        let by_alias = client(&ep, "alias/cc-round-trip");
        by_alias.check().unwrap();
        assert_eq!(by_alias.decrypt(&blob, &context).unwrap().as_slice(), b"attack at dawn");

        // Size limits are checked before any request.
        let e = c.encrypt(&[0u8; MAX_PLAINTEXT_LEN + 1], &context).unwrap_err();
        assert!(matches!(e, AwsKmsError::InvalidInput(_)), "{e}");
        assert!(matches!(c.encrypt(b"", &context).unwrap_err(), AwsKmsError::InvalidInput(_)));
        c.encrypt(&[7u8; MAX_PLAINTEXT_LEN], &context).unwrap();
    }

    #[test]
    fn wrong_encryption_context_is_rejected_with_aws_code() {
        let Some(ep) = moto_endpoint() else { return };
        let c = client(&ep, &create_key(&ep));
        let blob = c.encrypt(b"secret bytes", &ctx(&[("tenant", "a")])).unwrap();

        for wrong in [ctx(&[("tenant", "b")]), ctx(&[]), ctx(&[("tenant", "a"), ("extra", "x")])] {
            let e = c.decrypt(&blob, &wrong).unwrap_err();
            assert_eq!(e.code(), Some("InvalidCiphertextException"), "{e}");
            assert!(e.is_ciphertext_rejected() && !e.is_unavailable(), "{e}");
            assert!(e.to_string().contains("InvalidCiphertextException"), "{e}");
            assert!(e.to_string().contains("Decrypt"), "{e}");
            assert!(!e.to_string().contains("secret bytes"));
            assert!(matches!(ProviderError::from(e), ProviderError::UnwrapFailed));
        }

        // An altered blob (last byte: the tag) is rejected too.
        let mut altered = blob.clone();
        *altered.last_mut().unwrap() ^= 1;
        let e = c.decrypt(&altered, &ctx(&[("tenant", "a")])).unwrap_err();
        assert_eq!(e.code(), Some("InvalidCiphertextException"), "{e}");
    }

    #[test]
    fn blob_made_under_key_a_is_refused_by_a_client_for_key_b() {
        let Some(ep) = moto_endpoint() else { return };
        let a = client(&ep, &create_key(&ep));
        let b = client(&ep, &create_key(&ep));
        let context = ctx(&[("k", "v")]);
        let blob = a.encrypt(b"for key a only", &context).unwrap();

        let e = b.decrypt(&blob, &context).unwrap_err();
        // AWS: IncorrectKeyException. moto: AccessDeniedException.
        assert!(matches!(e.code(), Some("IncorrectKeyException" | "AccessDeniedException")), "{e}");
        assert!(!e.is_unavailable(), "{e}");
        assert_eq!(a.decrypt(&blob, &context).unwrap().as_slice(), b"for key a only");

        // Through the provider: the entry is not opened.
        let dk = DataKey::generate();
        let wrapped = AwsKmsProvider::new(a).wrap("tenant-a/db", &dk).unwrap();
        assert!(AwsKmsProvider::new(b).unwrap(&wrapped).is_err());
    }

    #[test]
    fn disabled_key_fails_check_with_its_state() {
        let Some(ep) = moto_endpoint() else { return };
        let key = create_key(&ep);
        let c = client(&ep, &key);
        c.check().unwrap();
        runtime().block_on(admin(&ep).disable_key().key_id(&key).send()).unwrap();

        let e = c.check().unwrap_err();
        assert!(matches!(&e, AwsKmsError::KeyUnusable { reason, .. } if reason.contains("Disabled")), "{e}");
        assert!(!e.is_unavailable());
        let provider = AwsKmsProvider::new(c.clone());
        assert!(provider.check().is_err());

        runtime().block_on(admin(&ep).enable_key().key_id(&key).send()).unwrap();
        c.check().unwrap();
    }

    #[test]
    fn unknown_key_is_not_found() {
        let Some(ep) = moto_endpoint() else { return };
        let c = client(&ep, "alias/does-not-exist");
        let e = c.check().unwrap_err();
        assert_eq!(e.code(), Some("NotFoundException"), "{e}");
        let e = c.encrypt(b"x", &BTreeMap::new()).unwrap_err();
        assert_eq!(e.code(), Some("NotFoundException"), "{e}");
        assert!(!e.is_unavailable());
        let pe = ProviderError::from(e);
        assert!(matches!(&pe, ProviderError::Unavailable(m) if m.contains("NotFoundException")), "{pe}");
    }

    #[test]
    fn callable_from_inside_another_runtime_and_from_many_threads() {
        let Some(ep) = moto_endpoint() else { return };
        let c = client(&ep, &create_key(&ep));
        let context = ctx(&[("t", "1")]);

        // From a task of another (single-threaded) runtime: blocks it, must not panic; and the
        // last clone dropped inside an async context must not panic either.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let inner = c.clone();
        let inner_ctx = context.clone();
        let blob = rt.block_on(async move {
            let blob = inner.encrypt(b"from async", &inner_ctx).unwrap();
            drop(inner);
            blob
        });
        assert_eq!(c.decrypt(&blob, &context).unwrap().as_slice(), b"from async");
        let moved = client(&ep, c.key_id());
        rt.block_on(async move { drop(moved) });

        let handles: Vec<_> = (0..8u8)
            .map(|i| {
                let c = c.clone();
                let context = context.clone();
                std::thread::spawn(move || {
                    for j in 0..4u8 {
                        let blob = c.encrypt(&[i, j], &context).unwrap();
                        assert_eq!(c.decrypt(&blob, &context).unwrap().as_slice(), &[i, j]);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    // ---- provider and envelope ----------------------------------------------------------------

    #[test]
    fn provider_wraps_with_name_bound_and_version_one() {
        let Some(ep) = moto_endpoint() else { return };
        let provider = AwsKmsProvider::new(client(&ep, &create_key(&ep)));
        let dk = DataKey::generate();
        let wrapped = provider.wrap("tenant-a/db", &dk).unwrap();
        assert_eq!(wrapped.len(), 1);
        let w = &wrapped[0];
        assert_eq!(
            (w.provider_id.as_str(), w.key_name.as_str(), w.key_version),
            (AWS_KMS_PROVIDER_ID, "tenant-a/db", 1)
        );
        assert!(!w.blob.is_empty() && w.blob.len() <= crypto_core::provider::MAX_BLOB_LEN);
        assert_eq!(provider.unwrap(&wrapped).unwrap(), dk);
        assert_eq!(provider.generate_data_key("tenant-a/db").unwrap().wrapped.len(), 1);

        // The key name is bound: the same blob under another name does not open.
        let mut moved = w.clone();
        moved.key_name = "tenant-b/db".into();
        assert!(matches!(provider.unwrap(&[moved]), Err(ProviderError::UnwrapFailed)));
        // So is the version, and the blob itself.
        let mut other_version = w.clone();
        other_version.key_version = 2;
        assert!(matches!(provider.unwrap(&[other_version]), Err(ProviderError::UnwrapFailed)));
        let mut altered = w.clone();
        *altered.blob.last_mut().unwrap() ^= 0x80;
        assert!(matches!(provider.unwrap(&[altered.clone()]), Err(ProviderError::UnwrapFailed)));
        // A rejected entry is skipped for the next one.
        assert_eq!(provider.unwrap(&[altered, w.clone()]).unwrap(), dk);

        // Entries of other providers are not ours.
        let mut foreign = w.clone();
        foreign.provider_id = "local".into();
        assert!(matches!(provider.unwrap(&[foreign]), Err(ProviderError::NoMatchingProvider(ids)) if ids == "local"));
        // Invalid key names are refused before any request.
        assert!(matches!(provider.wrap("../etc", &dk), Err(ProviderError::Key(_))));
    }

    #[test]
    fn routed_provider_serves_only_its_names_each_under_its_own_key() {
        let Some(ep) = moto_endpoint() else { return };
        let (ka, kb) = (create_key(&ep), create_key(&ep));
        let client_a = client(&ep, &ka);
        let client_b = client_a.for_key(&kb).unwrap();
        assert!(client_a.for_key("").is_err());
        let provider = AwsKmsProvider::routed()
            .with_key("tenant-a/db", client_a)
            .unwrap()
            .with_key("tenant-b/db", client_b)
            .unwrap()
            .with_id("aws-kms-tenants")
            .unwrap();
        assert_eq!(provider.id(), "aws-kms-tenants");
        provider.check().unwrap();
        let dk = DataKey::generate();
        let a = provider.wrap("tenant-a/db", &dk).unwrap();
        let b = provider.wrap("tenant-b/db", &dk).unwrap();
        assert_eq!(a[0].provider_id, "aws-kms-tenants");
        assert_eq!(provider.unwrap(&a).unwrap(), dk);
        assert_eq!(provider.unwrap(&b).unwrap(), dk);
        assert_eq!(provider.client_for("tenant-b/db").unwrap().key_id(), kb);
        assert!(matches!(provider.wrap("tenant-c/db", &dk), Err(ProviderError::Key(_))));
        // tenant-a's blob relabelled as tenant-b's goes to key b, which refuses it.
        let mut swapped = a[0].clone();
        swapped.key_name = "tenant-b/db".into();
        assert!(provider.unwrap(&[swapped]).is_err());
    }

    #[test]
    fn envelope_round_trip_through_aws_kms() {
        let Some(ep) = moto_endpoint() else { return };
        let envelope = Envelope::new(AwsKmsProvider::new(client(&ep, &create_key(&ep))));
        let context = EncryptionContext::new().with("tenant", "a").with("object", "bucket/x.bin");
        let plaintext: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();

        let sealed = envelope.seal("tenant-a/files", &context, &plaintext).unwrap();
        let header = envelope.inspect(&sealed).unwrap();
        assert_eq!(header.key_name(), "tenant-a/files");
        assert_eq!(header.key_version(), AWS_KEY_VERSION);
        assert_eq!(envelope.open(&context, &sealed).unwrap(), plaintext);

        let compact = envelope.seal_compact("tenant-a/db", &context, b"123-45-6789").unwrap();
        assert_eq!(envelope.open(&context, &compact).unwrap(), b"123-45-6789");

        let wrong = EncryptionContext::new().with("tenant", "b").with("object", "bucket/x.bin");
        assert!(matches!(envelope.open(&wrong, &sealed), Err(EnvelopeError::HeaderAuthentication)));
    }

    #[test]
    fn multi_provider_message_opens_with_local_alone_and_with_aws_alone() {
        let Some(ep) = moto_endpoint() else { return };
        let ring = Arc::new(Keyring::in_memory());
        ring.create_key("tenant-a/db").unwrap();
        let local = LocalProvider::new(ring);
        let aws = AwsKmsProvider::new(client(&ep, &create_key(&ep)));
        let multi = MultiProvider::new().with(Arc::new(local.clone())).with(Arc::new(aws.clone()));

        let context = EncryptionContext::new().with("tenant", "a");
        let sealed = Envelope::new(multi.clone()).seal("tenant-a/db", &context, b"recoverable").unwrap();
        let header = Envelope::new(multi).inspect(&sealed).unwrap();
        let ids: Vec<&str> = header.wrapped_keys().iter().map(|w| w.provider_id.as_str()).collect();
        assert_eq!(ids, ["local", AWS_KMS_PROVIDER_ID]);

        assert_eq!(Envelope::new(local).open(&context, &sealed).unwrap(), b"recoverable");
        assert_eq!(Envelope::new(aws.clone()).open(&context, &sealed).unwrap(), b"recoverable");

        // And the other way round: AWS primary, local recovery key fixed.
        let dr_ring = Arc::new(Keyring::in_memory());
        dr_ring.create_key("recovery/all").unwrap();
        let dr = LocalProvider::with_id(dr_ring, "local-dr").unwrap();
        let multi =
            MultiProvider::new().with(Arc::new(aws.clone())).with_fixed_key(Arc::new(dr.clone()), "recovery/all");
        let sealed = Envelope::new(multi).seal("tenant-a/db", &context, b"both ways").unwrap();
        assert_eq!(Envelope::new(dr).open(&context, &sealed).unwrap(), b"both ways");
        assert_eq!(Envelope::new(aws).open(&context, &sealed).unwrap(), b"both ways");
    }

    // ---- failures without moto: unreachable, silent, canned AWS errors -------------------------

    /// A port on 127.0.0.1 with nothing listening.
    fn dead_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        port
    }

    #[test]
    fn unreachable_endpoint_is_unavailable_within_bounded_time() {
        let ep = format!("http://127.0.0.1:{}", dead_port());
        let c = client(&ep, "alias/unreachable");
        let t = Instant::now();
        let e = c.encrypt(b"x", &BTreeMap::new()).unwrap_err();
        let elapsed = t.elapsed();
        assert!(e.is_unavailable(), "{e}");
        assert!(matches!(e, AwsKmsError::Unavailable { operation: "Encrypt", .. }), "{e}");
        assert!(e.code().is_none());
        assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");

        assert!(c.check().unwrap_err().is_unavailable());
        assert!(c.decrypt(b"blob", &BTreeMap::new()).unwrap_err().is_unavailable());
        let provider = AwsKmsProvider::new(c);
        let e = provider.wrap("tenant-a/db", &DataKey::generate()).unwrap_err();
        assert!(matches!(e, ProviderError::Unavailable(_)), "{e}");
    }

    /// A server that accepts connections, reads, and never answers.
    fn silent_server() -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in l.incoming().flatten() {
                held.push(s);
            }
        });
        format!("http://127.0.0.1:{port}")
    }

    #[test]
    fn silent_endpoint_times_out_within_the_operation_timeout() {
        let ep = silent_server();
        let c = AwsKmsClient::new(
            config(&ep, "alias/silent")
                .with_attempt_timeout(Duration::from_millis(500))
                .with_operation_timeout(Duration::from_secs(2)),
        )
        .unwrap();
        let t = Instant::now();
        let e = c.encrypt(b"x", &BTreeMap::new()).unwrap_err();
        let elapsed = t.elapsed();
        assert!(e.is_unavailable(), "{e}");
        assert!(elapsed >= Duration::from_millis(500) && elapsed < Duration::from_secs(5), "took {elapsed:?}");
    }

    /// A server that answers every request with `status` and an AWS JSON error `code`, and
    /// counts requests.
    fn canned_aws_error(status: u16, code: &'static str, message: &'static str) -> (String, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let count = Arc::new(AtomicUsize::new(0));
        let counter = count.clone();
        std::thread::spawn(move || {
            for stream in l.incoming().flatten() {
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = answer(stream, status, code, message);
            }
        });
        (format!("http://127.0.0.1:{port}"), count)
    }

    fn answer(stream: TcpStream, status: u16, code: &str, message: &str) -> std::io::Result<()> {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut content_length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 || line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; content_length];
        reader.read_exact(&mut body)?;
        let payload = format!(r#"{{"__type":"{code}","message":"{message}"}}"#);
        let mut stream = stream;
        write!(
            stream,
            "HTTP/1.1 {status} Error\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-RequestId: canned-request-1\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{payload}",
            payload.len()
        )?;
        stream.flush()
    }

    #[test]
    fn disabled_exception_is_reported_with_its_code() {
        let (ep, count) = canned_aws_error(400, "DisabledException", "arn:aws:kms:us-east-1:1:key/k is disabled.");
        let c = client(&ep, "alias/disabled");
        let e = c.encrypt(b"x", &BTreeMap::new()).unwrap_err();
        assert_eq!(e.code(), Some("DisabledException"), "{e}");
        assert!(!e.is_unavailable() && !e.is_ciphertext_rejected());
        let text = e.to_string();
        assert!(
            text.contains("Encrypt") && text.contains("DisabledException") && text.contains("is disabled"),
            "{text}"
        );
        assert!(text.contains("canned-request-1"), "{text}");
        assert!(matches!(&e, AwsKmsError::Service { status: 400, .. }));
        assert_eq!(count.load(Ordering::SeqCst), 1, "a client error is not retried");

        let pe = AwsKmsProvider::new(c).wrap("tenant-a/db", &DataKey::generate()).unwrap_err();
        assert!(matches!(&pe, ProviderError::Unavailable(m) if m.contains("DisabledException")), "{pe}");
    }

    #[test]
    fn incorrect_key_exception_is_an_unwrap_failure() {
        let (ep, _) =
            canned_aws_error(400, "IncorrectKeyException", "The key ID in the request does not identify a CMK");
        let c = client(&ep, "alias/other");
        let e = c.decrypt(b"blob", &BTreeMap::new()).unwrap_err();
        assert_eq!(e.code(), Some("IncorrectKeyException"));
        assert!(e.is_ciphertext_rejected());
        let wrapped = crypto_core::provider::WrappedKey {
            provider_id: AWS_KMS_PROVIDER_ID.into(),
            key_name: "tenant-a/db".into(),
            key_version: 1,
            blob: vec![1; 100],
        };
        assert!(matches!(AwsKmsProvider::new(c).unwrap(&[wrapped]), Err(ProviderError::UnwrapFailed)));
    }

    #[test]
    fn throttling_is_retried_then_unavailable() {
        let (ep, count) = canned_aws_error(400, "ThrottlingException", "Rate exceeded");
        let c = AwsKmsClient::new(config(&ep, "alias/busy").with_max_attempts(3)).unwrap();
        let t = Instant::now();
        let e = c.decrypt(b"blob", &BTreeMap::new()).unwrap_err();
        assert_eq!(e.code(), Some("ThrottlingException"));
        assert!(e.is_unavailable());
        assert_eq!(count.load(Ordering::SeqCst), 3, "three attempts");
        assert!(t.elapsed() < Duration::from_secs(10));

        let (ep, count) = canned_aws_error(500, "KMSInternalException", "oops");
        let c = AwsKmsClient::new(config(&ep, "alias/broken").with_max_attempts(2)).unwrap();
        let e = c.check().unwrap_err();
        assert!(e.is_unavailable() && e.code() == Some("KMSInternalException"), "{e}");
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    // ---- configuration and secrecy ------------------------------------------------------------

    #[test]
    fn debug_shows_no_secret() {
        let cfg = config(&format!("http://127.0.0.1:{}", dead_port()), "alias/x")
            .with_credentials(AwsCredentials::new(ACCESS_KEY_ID, SECRET).with_session_token(SESSION_TOKEN));
        let shown = format!("{cfg:?}");
        assert!(shown.contains("alias/x") && shown.contains(ACCESS_KEY_ID), "{shown}");
        assert!(!shown.contains(SECRET) && !shown.contains(SESSION_TOKEN), "{shown}");

        let c = AwsKmsClient::new(cfg).unwrap();
        let provider = AwsKmsProvider::new(c.clone());
        for shown in [format!("{c:?}"), format!("{provider:?}"), format!("{c:#?}")] {
            assert!(shown.contains("alias/x"), "{shown}");
            assert!(!shown.contains(SECRET) && !shown.contains(SESSION_TOKEN), "{shown}");
        }
        let e = c.encrypt(b"plaintext-marker", &BTreeMap::new()).unwrap_err();
        for shown in [format!("{e}"), format!("{e:?}")] {
            assert!(!shown.contains(SECRET) && !shown.contains("plaintext-marker"), "{shown}");
        }
    }

    #[test]
    fn invalid_configuration_is_refused_before_any_request() {
        let ok = || AwsKmsConfig::new("alias/x").with_region(REGION);
        for bad in [
            AwsKmsConfig::new("").with_region(REGION),
            AwsKmsConfig::new("alias/has space").with_region(REGION),
            AwsKmsConfig::new("k".repeat(MAX_KEY_ID_LEN + 1)).with_region(REGION),
            ok().with_region("us east 1"),
            ok().with_endpoint_url("127.0.0.1:4566"),
            ok().with_endpoint_url("http://"),
            ok().with_endpoint_url("https://user:pass@kms.example/"),
            ok().with_max_attempts(0),
            ok().with_operation_timeout(Duration::ZERO),
            // Absurd limits are refused, not a panic on overflowing time arithmetic.
            ok().with_operation_timeout(Duration::MAX),
            ok().with_attempt_timeout(Duration::MAX),
            ok().with_connect_timeout(MAX_TIMEOUT + Duration::from_secs(1)),
            ok().with_credentials(AwsCredentials::new("", "x")),
        ] {
            let e = AwsKmsClient::new(bad.clone()).unwrap_err();
            assert!(matches!(e, AwsKmsError::Config(_)), "{bad:?}: {e}");
            assert!(!e.is_unavailable());
            assert!(matches!(ProviderError::from(e), ProviderError::Config(_)));
        }
        assert!(ok().validate().is_ok());
        let mut cfg = ok();
        cfg.initial_backoff = Duration::from_secs(10);
        assert!(cfg.validate().is_err());
        cfg.max_backoff = Duration::MAX;
        assert!(cfg.validate().is_err());
        assert!(ok().with_operation_timeout(MAX_TIMEOUT).validate().is_ok());
        assert!(AwsKmsProvider::new(AwsKmsClient::new(ok()).unwrap()).with_id("bad id").is_err());
        assert!(AwsKmsProvider::routed().with_key("a//b", AwsKmsClient::new(ok()).unwrap()).is_err());
    }

    /// No static credentials and nothing in the default chain (checked in a child process
    /// with a cleared environment): a `Credentials` error, reported as unavailable.
    #[test]
    fn no_credentials_is_a_credentials_error() {
        const CHILD: &str = "CRYPTOCORE_AWS_KMS_TEST_CHILD";
        if std::env::var_os(CHILD).is_some() {
            let ep = format!("http://127.0.0.1:{}", dead_port());
            let c = AwsKmsClient::new(AwsKmsConfig::new("alias/x").with_region(REGION).with_endpoint_url(ep)).unwrap();
            let e = c.encrypt(b"x", &BTreeMap::new()).unwrap_err();
            assert!(matches!(e, AwsKmsError::Credentials { .. }), "{e:?}");
            assert!(e.is_unavailable());
            assert!(matches!(ProviderError::from(e), ProviderError::Unavailable(_)));
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "aws::no_credentials_is_a_credentials_error", "--nocapture", "--test-threads=1"])
            .env_clear()
            .env(CHILD, "1")
            .env("HOME", "/nonexistent")
            .env("AWS_CONFIG_FILE", "/nonexistent/config")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "{text}");
    }
}
