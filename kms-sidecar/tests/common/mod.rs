//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// A fresh schema on the test server, dropped at the end; None (with a loud notice) when
/// the server is unreachable outside CI.
pub(crate) struct PgSchema {
    admin: Option<postgres::Client>,
    schema: String,
    /// Connection string selecting the fresh schema.
    pub(crate) config: String,
}

impl PgSchema {
    pub(crate) fn new() -> Option<Self> {
        let base = std::env::var("KMS_TEST_POSTGRES")
            .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=5".into());
        let mut admin = match postgres::Client::connect(&base, postgres::NoTls) {
            Ok(c) => c,
            Err(e) => {
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!("PostgreSQL required in CI but not reachable at {base:?}: {e}");
                }
                eprintln!("\n*** SKIPPED: PostgreSQL keystore tests: server not reachable at {base:?}: {e} ***\n");
                return None;
            }
        };
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let schema = format!("kms_test_{}_{}", std::process::id(), nanos);
        admin.batch_execute(&format!("CREATE SCHEMA {schema}")).unwrap();
        let config = format!("{base} options='-c search_path={schema}'");
        Some(Self { admin: Some(admin), schema, config })
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if let Some(mut admin) = self.admin.take() {
            let _ = admin.batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema));
        }
    }
}
