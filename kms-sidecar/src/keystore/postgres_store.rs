//! PostgreSQL backend: many sidecars share one database. Writes are transactions with
//! synchronous commit; key changes lock the key's row (`SELECT … FOR UPDATE`) and check
//! its `row_version`, so concurrent rotations from two sidecars serialise and the loser
//! gets `Conflict`. Migrations run under a transaction-scoped advisory lock.

use std::sync::{Mutex, MutexGuard};

use postgres::{Client, GenericClient, NoTls};

use super::schema::MIGRATIONS;
use super::{
    CertificateRecord, KeyRecord, KeyStore, KeyUpdate, SecretRecord, SecretSummary, StoreError, StoredCa,
    StoredVersion, TokenRecord, decode_parents, encode_parents, rotation_period_from_db, rotation_period_to_db,
    state_from_columns, state_to_columns, version_from_db,
};

/// Advisory-lock id serialising migrations across sidecars ("kms-sche" in ASCII).
const MIGRATION_LOCK: i64 = 0x6b6d_732d_7363_6865;

/// The PostgreSQL keystore.
pub struct PostgresStore {
    client: Mutex<Client>,
    target: String,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").field("target", &self.target).finish()
    }
}

impl PostgresStore {
    /// Connects with a libpq-style connection string (`host=… user=… dbname=…`, or a
    /// `postgresql://` URL) and migrates the schema. TLS to the database is not yet
    /// supported: use a loopback or Unix-socket connection.
    pub fn connect(config: &str) -> Result<Self, StoreError> {
        let parsed: postgres::Config =
            config.parse().map_err(|e| StoreError::Backend(format!("bad connection string: {e}")))?;
        // For messages: host and database, never the password.
        let target = format!("{:?}/{}", parsed.get_hosts(), parsed.get_dbname().unwrap_or("?"));
        let client = parsed.connect(NoTls)?;
        let store = Self { client: Mutex::new(client), target };
        store.migrate()?;
        Ok(store)
    }

    fn client(&self) -> MutexGuard<'_, Client> {
        // An interrupted transaction is rolled back when dropped; the client stays usable.
        self.client.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client();
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )?;
        let current: i64 = tx.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[])?.get(0);
        if current > MIGRATIONS.len() as i64 {
            return Err(StoreError::Corrupt(format!(
                "database schema {current} is newer than this build ({}); upgrade the sidecar",
                MIGRATIONS.len()
            )));
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            tx.batch_execute(m.postgres)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, EXTRACT(EPOCH FROM now())::BIGINT)",
                &[&(i as i64 + 1)],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

fn load_key(c: &mut impl GenericClient, name: &str) -> Result<KeyRecord, StoreError> {
    let row = c
        .query_opt(
            "SELECT state, delete_after, primary_version, min_decrypt_version, created_at, row_version, rotation_period
             FROM keys WHERE name = $1",
            &[&name],
        )?
        .ok_or_else(|| StoreError::NotFound(format!("key {name:?}")))?;
    let versions = c
        .query(
            "SELECT version, wrapped_material, created_at, destroyed_at FROM key_versions WHERE key_name = $1 ORDER BY version",
            &[&name],
        )?
        .into_iter()
        .map(|r| {
            Ok(StoredVersion {
                version: version_from_db(r.get(0))?,
                wrapped_material: r.get(1),
                created_at: r.get(2),
                destroyed_at: r.get(3),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let state: String = row.get(0);
    Ok(KeyRecord {
        name: name.to_owned(),
        state: state_from_columns(&state, row.get(1))?,
        primary_version: version_from_db(row.get(2))?,
        min_decrypt_version: version_from_db(row.get(3))?,
        created_at: row.get(4),
        row_version: row.get(5),
        rotation_period: rotation_period_from_db(row.get(6))?,
        versions,
    })
}

/// Locks the key's row and fails with `Conflict` unless its row_version is `expected`.
fn lock_and_check(c: &mut impl GenericClient, name: &str, expected: i64) -> Result<(), StoreError> {
    match c.query_opt("SELECT row_version FROM keys WHERE name = $1 FOR UPDATE", &[&name])? {
        None => Err(StoreError::NotFound(format!("key {name:?}"))),
        Some(r) if r.get::<_, i64>(0) != expected => Err(StoreError::Conflict(format!("key {name:?}"))),
        Some(_) => Ok(()),
    }
}

impl KeyStore for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgresql"
    }

    fn create_key(&self, name: &str, wrapped_material: &[u8], now: i64) -> Result<KeyRecord, StoreError> {
        let mut client = self.client();
        let mut tx = client.transaction()?;
        let (state, delete_after) = state_to_columns(crypto_core::keys::KeyState::Enabled);
        let inserted = tx.execute(
            "INSERT INTO keys (name, state, delete_after, primary_version, min_decrypt_version, created_at, row_version)
             VALUES ($1, $2, $3, 1, 1, $4, 1) ON CONFLICT (name) DO NOTHING",
            &[&name, &state, &delete_after, &now],
        )?;
        if inserted == 0 {
            return Err(StoreError::AlreadyExists(format!("key {name:?}")));
        }
        tx.execute(
            "INSERT INTO key_versions (key_name, version, wrapped_material, created_at) VALUES ($1, 1, $2, $3)",
            &[&name, &wrapped_material, &now],
        )?;
        let record = load_key(&mut tx, name)?;
        tx.commit()?;
        Ok(record)
    }

    fn get_key(&self, name: &str) -> Result<KeyRecord, StoreError> {
        load_key(&mut *self.client(), name)
    }

    fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let mut client = self.client();
        let mut tx = client.build_transaction().read_only(true).start()?;
        let names: Vec<String> =
            tx.query("SELECT name FROM keys ORDER BY name", &[])?.into_iter().map(|r| r.get(0)).collect();
        let keys = names.iter().map(|n| load_key(&mut tx, n)).collect::<Result<Vec<_>, _>>()?;
        tx.commit()?;
        Ok(keys)
    }

    fn key_count(&self) -> Result<u64, StoreError> {
        let n: i64 = self.client().query_one("SELECT COUNT(*) FROM keys", &[])?.get(0);
        Ok(n as u64)
    }

    fn add_version(
        &self,
        name: &str,
        expected: i64,
        wrapped_material: &[u8],
        now: i64,
    ) -> Result<KeyRecord, StoreError> {
        let mut client = self.client();
        let mut tx = client.transaction()?;
        lock_and_check(&mut tx, name, expected)?;
        let next: i64 = tx.query_one("SELECT MAX(version) + 1 FROM key_versions WHERE key_name = $1", &[&name])?.get(0);
        tx.execute(
            "INSERT INTO key_versions (key_name, version, wrapped_material, created_at) VALUES ($1, $2, $3, $4)",
            &[&name, &next, &wrapped_material, &now],
        )?;
        tx.execute(
            "UPDATE keys SET primary_version = $2, row_version = row_version + 1 WHERE name = $1",
            &[&name, &next],
        )?;
        let record = load_key(&mut tx, name)?;
        tx.commit()?;
        Ok(record)
    }

    fn update_key(&self, name: &str, expected: i64, update: KeyUpdate) -> Result<KeyRecord, StoreError> {
        let mut client = self.client();
        let mut tx = client.transaction()?;
        lock_and_check(&mut tx, name, expected)?;
        let (state, delete_after) = state_to_columns(update.state);
        tx.execute(
            "UPDATE keys SET state = $2, delete_after = $3, min_decrypt_version = $4, rotation_period = $5,
                             row_version = row_version + 1
             WHERE name = $1",
            &[
                &name,
                &state,
                &delete_after,
                &i64::from(update.min_decrypt_version),
                &rotation_period_to_db(update.rotation_period),
            ],
        )?;
        let record = load_key(&mut tx, name)?;
        tx.commit()?;
        Ok(record)
    }

    fn destroy_version(&self, name: &str, version: u32, now: i64) -> Result<KeyRecord, StoreError> {
        let mut client = self.client();
        let mut tx = client.transaction()?;
        let n = tx.execute(
            "UPDATE key_versions SET wrapped_material = NULL, destroyed_at = COALESCE(destroyed_at, $3)
             WHERE key_name = $1 AND version = $2",
            &[&name, &i64::from(version), &now],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("version {version} of key {name:?}")));
        }
        tx.execute("UPDATE keys SET row_version = row_version + 1 WHERE name = $1", &[&name])?;
        let record = load_key(&mut tx, name)?;
        tx.commit()?;
        // The old row version (with the material) stays in the table's pages: plain VACUUM
        // would only mark that space reusable. VACUUM FULL rewrites the (small) table into
        // new files and unlinks the old ones, so the live database no longer holds the
        // bytes. It locks key_versions for the few milliseconds the rewrite takes; key
        // destruction is rare. Best effort: the destruction itself is committed already.
        let _ = client.batch_execute("VACUUM FULL key_versions");
        Ok(record)
    }

    fn put_secret(&self, name: &str, key_name: &str, ciphertext: &[u8], now: i64) -> Result<u32, StoreError> {
        let mut client = self.client();
        let mut tx = client.transaction()?;
        // Serialise writers of the same secret name across sidecars.
        tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&name])?;
        let next: i64 =
            tx.query_one("SELECT COALESCE(MAX(version), 0) + 1 FROM secrets WHERE name = $1", &[&name])?.get(0);
        tx.execute(
            "INSERT INTO secrets (name, version, key_name, ciphertext, created_at) VALUES ($1, $2, $3, $4, $5)",
            &[&name, &next, &key_name, &ciphertext, &now],
        )?;
        tx.commit()?;
        version_from_db(next)
    }

    fn get_secret(&self, name: &str, version: Option<u32>) -> Result<SecretRecord, StoreError> {
        let mut client = self.client();
        let row = match version {
            Some(v) => client.query_opt(
                "SELECT version, key_name, ciphertext, created_at FROM secrets WHERE name = $1 AND version = $2",
                &[&name, &i64::from(v)],
            )?,
            None => client.query_opt(
                "SELECT version, key_name, ciphertext, created_at FROM secrets WHERE name = $1 ORDER BY version DESC LIMIT 1",
                &[&name],
            )?,
        };
        let r = row.ok_or_else(|| StoreError::NotFound(format!("secret {name:?}")))?;
        Ok(SecretRecord {
            name: name.to_owned(),
            version: version_from_db(r.get(0))?,
            key_name: r.get(1),
            ciphertext: r.get(2),
            created_at: r.get(3),
        })
    }

    fn list_secrets(&self) -> Result<Vec<SecretSummary>, StoreError> {
        self.client()
            .query("SELECT DISTINCT ON (name) name, version, key_name FROM secrets ORDER BY name, version DESC", &[])?
            .into_iter()
            .map(|r| {
                Ok(SecretSummary { name: r.get(0), latest_version: version_from_db(r.get(1))?, key_name: r.get(2) })
            })
            .collect()
    }

    fn delete_secret(&self, name: &str) -> Result<(), StoreError> {
        let n = self.client().execute("DELETE FROM secrets WHERE name = $1", &[&name])?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("secret {name:?}")));
        }
        Ok(())
    }

    fn schema_version(&self) -> Result<u32, StoreError> {
        let v: i64 = self.client().query_one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[])?.get(0);
        Ok(v as u32)
    }

    fn put_ca(&self, ca: &StoredCa) -> Result<(), StoreError> {
        let n = self.client().execute(
            "INSERT INTO pki_ca (id, certificate, parents, wrapped_key, policy, crl_number, created_at)
             VALUES (1, $1, $2, $3, $4, 0, $5) ON CONFLICT (id) DO NOTHING",
            &[&ca.certificate, &encode_parents(&ca.parents), &ca.wrapped_key, &ca.policy, &ca.created_at],
        )?;
        if n == 0 {
            return Err(StoreError::AlreadyExists("the CA".into()));
        }
        Ok(())
    }

    fn get_ca(&self) -> Result<StoredCa, StoreError> {
        let row = self
            .client()
            .query_opt("SELECT certificate, parents, wrapped_key, policy, created_at FROM pki_ca WHERE id = 1", &[])?
            .ok_or_else(|| StoreError::NotFound("the CA (run `kmsctl ca init`)".into()))?;
        let parents: Vec<u8> = row.get(1);
        Ok(StoredCa {
            certificate: row.get(0),
            parents: decode_parents(&parents)?,
            wrapped_key: row.get(2),
            policy: row.get(3),
            created_at: row.get(4),
        })
    }

    fn next_crl_number(&self) -> Result<u64, StoreError> {
        // One row, updated in place: concurrent sidecars serialise on its lock, so numbers
        // are unique and increasing across all of them.
        let row = self
            .client()
            .query_opt("UPDATE pki_ca SET crl_number = crl_number + 1 WHERE id = 1 RETURNING crl_number", &[])?
            .ok_or_else(|| StoreError::NotFound("the CA".into()))?;
        let n: i64 = row.get(0);
        u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("CRL number {n}")))
    }

    fn crl_snapshot(&self) -> Result<(u64, Vec<CertificateRecord>), StoreError> {
        let mut client = self.client();
        let mut tx = client.transaction()?;
        // The UPDATE locks the CA row until commit; revocations take the same lock first.
        let row = tx
            .query_opt("UPDATE pki_ca SET crl_number = crl_number + 1 WHERE id = 1 RETURNING crl_number", &[])?
            .ok_or_else(|| StoreError::NotFound("the CA".into()))?;
        let n: i64 = row.get(0);
        let revoked = tx
            .query(
                "SELECT serial, common_name, sans, not_after, issued_at, revoked_at, revoke_reason
                 FROM pki_certificates WHERE revoked_at IS NOT NULL ORDER BY serial",
                &[],
            )?
            .iter()
            .map(certificate_from_row)
            .collect();
        tx.commit()?;
        Ok((u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("CRL number {n}")))?, revoked))
    }

    fn add_certificate(&self, c: &CertificateRecord) -> Result<(), StoreError> {
        let n = self.client().execute(
            "INSERT INTO pki_certificates (serial, common_name, sans, not_after, issued_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (serial) DO NOTHING",
            &[&c.serial, &c.common_name, &c.sans.join("\n"), &c.not_after, &c.issued_at],
        )?;
        if n == 0 {
            return Err(StoreError::AlreadyExists(format!("certificate {}", c.serial)));
        }
        Ok(())
    }

    fn list_certificates(&self) -> Result<Vec<CertificateRecord>, StoreError> {
        let rows = self.client().query(
            "SELECT serial, common_name, sans, not_after, issued_at, revoked_at, revoke_reason
             FROM pki_certificates ORDER BY issued_at, serial",
            &[],
        )?;
        Ok(rows.iter().map(certificate_from_row).collect())
    }

    fn revoke_certificate(&self, serial: &str, reason: u8, now: i64) -> Result<CertificateRecord, StoreError> {
        let mut client = self.client();
        let mut tx = client.transaction()?;
        // Serialise with CRL snapshots (see crl_snapshot).
        tx.execute("SELECT 1 FROM pki_ca WHERE id = 1 FOR UPDATE", &[])?;
        tx.execute(
            "UPDATE pki_certificates SET revoked_at = $2, revoke_reason = $3 WHERE serial = $1 AND revoked_at IS NULL",
            &[&serial, &now, &i32::from(reason)],
        )?;
        let row = tx
            .query_opt(
                "SELECT serial, common_name, sans, not_after, issued_at, revoked_at, revoke_reason
                 FROM pki_certificates WHERE serial = $1",
                &[&serial],
            )?
            .ok_or_else(|| StoreError::NotFound(format!("certificate {serial}")))?;
        let record = certificate_from_row(&row);
        tx.commit()?;
        Ok(record)
    }

    fn add_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        let n = self.client().execute(
            "INSERT INTO api_tokens (id, name, secret_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO NOTHING",
            &[&t.id, &t.name, &t.secret_hash, &t.created_at, &t.expires_at],
        )?;
        if n == 0 {
            return Err(StoreError::AlreadyExists(format!("token {}", t.id)));
        }
        Ok(())
    }

    fn get_token(&self, id: &str) -> Result<TokenRecord, StoreError> {
        let row = self
            .client()
            .query_opt(&format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = $1"), &[&id])?
            .ok_or_else(|| StoreError::NotFound(format!("token {id}")))?;
        Ok(token_from_row(&row))
    }

    fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let rows =
            self.client().query(&format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id"), &[])?;
        Ok(rows.iter().map(token_from_row).collect())
    }

    fn revoke_tokens(&self, id_or_name: &str, now: i64) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = self.client().query(
            &format!(
                "UPDATE api_tokens SET revoked_at = $2 WHERE (id = $1 OR name = $1) AND revoked_at IS NULL
                 RETURNING {TOKEN_COLUMNS}"
            ),
            &[&id_or_name, &now],
        )?;
        Ok(rows.iter().map(token_from_row).collect())
    }
}

fn certificate_from_row(r: &postgres::Row) -> CertificateRecord {
    let sans: String = r.get(2);
    CertificateRecord {
        serial: r.get(0),
        common_name: r.get(1),
        sans: sans.split('\n').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        not_after: r.get(3),
        issued_at: r.get(4),
        revoked_at: r.get(5),
        revoke_reason: r.get::<_, Option<i32>>(6).and_then(|v| u8::try_from(v).ok()),
    }
}

const TOKEN_COLUMNS: &str = "id, name, secret_hash, created_at, expires_at, revoked_at";

fn token_from_row(r: &postgres::Row) -> TokenRecord {
    TokenRecord {
        id: r.get(0),
        name: r.get(1),
        secret_hash: r.get(2),
        created_at: r.get(3),
        expires_at: r.get(4),
        revoked_at: r.get(5),
    }
}
