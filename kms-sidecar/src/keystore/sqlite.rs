//! Embedded SQLite backend: one file, WAL journal, `synchronous=FULL` (every commit is
//! fsync'd before it is acknowledged).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::schema::MIGRATIONS;
use super::{
    CertificateRecord, KeyRecord, KeyStore, KeyUpdate, SecretRecord, SecretSummary, StoreError, StoredCa,
    StoredVersion, TokenRecord, decode_parents, encode_parents, rotation_period_from_db, rotation_period_to_db,
    state_from_columns, state_to_columns, version_from_db,
};

/// The SQLite keystore.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed, mode 0600) the database at `path` and migrates it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let existed = path.exists();
        let conn = Connection::open(&path)?;
        #[cfg(unix)]
        if !existed {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| StoreError::Backend(format!("chmod {}: {e}", path.display())))?;
        }
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // journal_mode returns a row, so it is read rather than executed.
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(format!("could not enable WAL (journal_mode={mode})")));
        }
        // secure_delete: SQLite overwrites deleted content instead of leaving it in free
        // space, so a destroyed key version's wrapped material is gone from the file.
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA secure_delete=ON;")?;
        let store = Self { conn: Mutex::new(conn), path };
        store.migrate()?;
        Ok(store)
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic mid-transaction rolls the transaction back when it is dropped, so the
        // connection behind a poisoned lock is still consistent.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
        )?;
        let current: i64 = tx.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", [], |r| r.get(0))?;
        if current > MIGRATIONS.len() as i64 {
            return Err(StoreError::Corrupt(format!(
                "database schema {current} is newer than this build ({}); upgrade the sidecar",
                MIGRATIONS.len()
            )));
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            tx.execute_batch(m.sqlite)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, strftime('%s','now'))",
                [i as i64 + 1],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

fn load_key(conn: &Connection, name: &str) -> Result<KeyRecord, StoreError> {
    let row = conn
        .query_row(
            "SELECT state, delete_after, primary_version, min_decrypt_version, created_at, row_version, rotation_period
             FROM keys WHERE name = ?1",
            [name],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<i64>>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, Option<i64>>(6)?,
                ))
            },
        )
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("key {name:?}")))?;
    let mut stmt = conn.prepare_cached(
        "SELECT version, wrapped_material, created_at, destroyed_at FROM key_versions WHERE key_name = ?1 ORDER BY version",
    )?;
    let versions = stmt
        .query_map([name], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Option<Vec<u8>>>(1)?, r.get::<_, i64>(2)?, r.get::<_, Option<i64>>(3)?))
        })?
        .map(|row| {
            let (v, m, c, d) = row?;
            Ok(StoredVersion { version: version_from_db(v)?, wrapped_material: m, created_at: c, destroyed_at: d })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(KeyRecord {
        name: name.to_owned(),
        state: state_from_columns(&row.0, row.1)?,
        primary_version: version_from_db(row.2)?,
        min_decrypt_version: version_from_db(row.3)?,
        created_at: row.4,
        row_version: row.5,
        rotation_period: rotation_period_from_db(row.6)?,
        versions,
    })
}

/// Fails with `Conflict` unless the key's row_version is `expected` (NotFound if absent).
fn check_row_version(conn: &Connection, name: &str, expected: i64) -> Result<(), StoreError> {
    let current: Option<i64> =
        conn.query_row("SELECT row_version FROM keys WHERE name = ?1", [name], |r| r.get(0)).optional()?;
    match current {
        None => Err(StoreError::NotFound(format!("key {name:?}"))),
        Some(v) if v != expected => Err(StoreError::Conflict(format!("key {name:?}"))),
        Some(_) => Ok(()),
    }
}

impl KeyStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn create_key(&self, name: &str, wrapped_material: &[u8], now: i64) -> Result<KeyRecord, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists: bool = tx.query_row("SELECT EXISTS(SELECT 1 FROM keys WHERE name = ?1)", [name], |r| r.get(0))?;
        if exists {
            return Err(StoreError::AlreadyExists(format!("key {name:?}")));
        }
        let (state, delete_after) = state_to_columns(crypto_core::keys::KeyState::Enabled);
        tx.execute(
            "INSERT INTO keys (name, state, delete_after, primary_version, min_decrypt_version, created_at, row_version)
             VALUES (?1, ?2, ?3, 1, 1, ?4, 1)",
            params![name, state, delete_after, now],
        )?;
        tx.execute(
            "INSERT INTO key_versions (key_name, version, wrapped_material, created_at) VALUES (?1, 1, ?2, ?3)",
            params![name, wrapped_material, now],
        )?;
        let record = load_key(&tx, name)?;
        tx.commit()?;
        Ok(record)
    }

    fn get_key(&self, name: &str) -> Result<KeyRecord, StoreError> {
        load_key(&self.conn(), name)
    }

    fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let conn = self.conn();
        let names: Vec<String> = conn
            .prepare_cached("SELECT name FROM keys ORDER BY name")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        names.iter().map(|n| load_key(&conn, n)).collect()
    }

    fn key_count(&self) -> Result<u64, StoreError> {
        let n: i64 = self.conn().query_row("SELECT COUNT(*) FROM keys", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    fn add_version(
        &self,
        name: &str,
        expected: i64,
        wrapped_material: &[u8],
        now: i64,
    ) -> Result<KeyRecord, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        check_row_version(&tx, name, expected)?;
        let next: i64 =
            tx.query_row("SELECT MAX(version) + 1 FROM key_versions WHERE key_name = ?1", [name], |r| r.get(0))?;
        tx.execute(
            "INSERT INTO key_versions (key_name, version, wrapped_material, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![name, next, wrapped_material, now],
        )?;
        tx.execute(
            "UPDATE keys SET primary_version = ?2, row_version = row_version + 1 WHERE name = ?1",
            params![name, next],
        )?;
        let record = load_key(&tx, name)?;
        tx.commit()?;
        Ok(record)
    }

    fn update_key(&self, name: &str, expected: i64, update: KeyUpdate) -> Result<KeyRecord, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        check_row_version(&tx, name, expected)?;
        let (state, delete_after) = state_to_columns(update.state);
        tx.execute(
            "UPDATE keys SET state = ?2, delete_after = ?3, min_decrypt_version = ?4, rotation_period = ?5,
                             row_version = row_version + 1
             WHERE name = ?1",
            params![
                name,
                state,
                delete_after,
                i64::from(update.min_decrypt_version),
                rotation_period_to_db(update.rotation_period)
            ],
        )?;
        let record = load_key(&tx, name)?;
        tx.commit()?;
        Ok(record)
    }

    fn destroy_version(&self, name: &str, version: u32, now: i64) -> Result<KeyRecord, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE key_versions SET wrapped_material = NULL, destroyed_at = COALESCE(destroyed_at, ?3)
             WHERE key_name = ?1 AND version = ?2",
            params![name, i64::from(version), now],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("version {version} of key {name:?}")));
        }
        tx.execute("UPDATE keys SET row_version = row_version + 1 WHERE name = ?1", [name])?;
        let record = load_key(&tx, name)?;
        tx.commit()?;
        // Older WAL frames may still hold page images with the material: copy the new pages
        // into the database file and truncate the WAL. Best effort: the destruction itself
        // is committed; a checkpoint that cannot finish now runs again at the next one.
        let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        Ok(record)
    }

    fn put_secret(&self, name: &str, key_name: &str, ciphertext: &[u8], now: i64) -> Result<u32, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let next: i64 =
            tx.query_row("SELECT COALESCE(MAX(version), 0) + 1 FROM secrets WHERE name = ?1", [name], |r| r.get(0))?;
        tx.execute(
            "INSERT INTO secrets (name, version, key_name, ciphertext, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![name, next, key_name, ciphertext, now],
        )?;
        tx.commit()?;
        version_from_db(next)
    }

    fn get_secret(&self, name: &str, version: Option<u32>) -> Result<SecretRecord, StoreError> {
        let conn = self.conn();
        let row = match version {
            Some(v) => conn
                .query_row(
                    "SELECT version, key_name, ciphertext, created_at FROM secrets WHERE name = ?1 AND version = ?2",
                    params![name, i64::from(v)],
                    |r| Ok((r.get::<_, i64>(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?,
            None => conn
                .query_row(
                    "SELECT version, key_name, ciphertext, created_at FROM secrets WHERE name = ?1
                     ORDER BY version DESC LIMIT 1",
                    [name],
                    |r| Ok((r.get::<_, i64>(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?,
        };
        let (v, key_name, ciphertext, created_at) =
            row.ok_or_else(|| StoreError::NotFound(format!("secret {name:?}")))?;
        Ok(SecretRecord { name: name.to_owned(), version: version_from_db(v)?, key_name, ciphertext, created_at })
    }

    fn list_secrets(&self) -> Result<Vec<SecretSummary>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT s.name, s.version, s.key_name FROM secrets s
             JOIN (SELECT name, MAX(version) AS v FROM secrets GROUP BY name) m ON s.name = m.name AND s.version = m.v
             ORDER BY s.name",
        )?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?)))?
            .map(|row| {
                let (name, v, key_name) = row?;
                Ok(SecretSummary { name, latest_version: version_from_db(v)?, key_name })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(rows)
    }

    fn delete_secret(&self, name: &str) -> Result<(), StoreError> {
        let n = self.conn().execute("DELETE FROM secrets WHERE name = ?1", [name])?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("secret {name:?}")));
        }
        Ok(())
    }

    fn schema_version(&self) -> Result<u32, StoreError> {
        let v: i64 =
            self.conn().query_row("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", [], |r| r.get(0))?;
        Ok(v as u32)
    }

    fn put_ca(&self, ca: &StoredCa) -> Result<(), StoreError> {
        let n = self.conn().execute(
            "INSERT INTO pki_ca (id, certificate, parents, wrapped_key, policy, crl_number, created_at)
             VALUES (1, ?1, ?2, ?3, ?4, 0, ?5) ON CONFLICT (id) DO NOTHING",
            params![ca.certificate, encode_parents(&ca.parents), ca.wrapped_key, ca.policy, ca.created_at],
        )?;
        if n == 0 {
            return Err(StoreError::AlreadyExists("the CA".into()));
        }
        Ok(())
    }

    fn get_ca(&self) -> Result<StoredCa, StoreError> {
        let row = self
            .conn()
            .query_row(
                "SELECT certificate, parents, wrapped_key, policy, created_at FROM pki_ca WHERE id = 1",
                [],
                |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound("the CA (run `kmsctl ca init`)".into()))?;
        Ok(StoredCa {
            certificate: row.0,
            parents: decode_parents(&row.1)?,
            wrapped_key: row.2,
            policy: row.3,
            created_at: row.4,
        })
    }

    fn next_crl_number(&self) -> Result<u64, StoreError> {
        let n: Option<i64> = self
            .conn()
            .query_row("UPDATE pki_ca SET crl_number = crl_number + 1 WHERE id = 1 RETURNING crl_number", [], |r| {
                r.get(0)
            })
            .optional()?;
        let n = n.ok_or_else(|| StoreError::NotFound("the CA".into()))?;
        u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("CRL number {n}")))
    }

    fn crl_snapshot(&self) -> Result<(u64, Vec<CertificateRecord>), StoreError> {
        let mut conn = self.conn();
        // IMMEDIATE: the database's write lock, which revocations also take.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n: Option<i64> = tx
            .query_row("UPDATE pki_ca SET crl_number = crl_number + 1 WHERE id = 1 RETURNING crl_number", [], |r| {
                r.get(0)
            })
            .optional()?;
        let n = n.ok_or_else(|| StoreError::NotFound("the CA".into()))?;
        let revoked = {
            let mut stmt = tx.prepare(
                "SELECT serial, common_name, sans, not_after, issued_at, revoked_at, revoke_reason
                 FROM pki_certificates WHERE revoked_at IS NOT NULL ORDER BY serial",
            )?;
            stmt.query_map([], certificate_from_row)?.collect::<Result<Vec<_>, _>>()?
        };
        tx.commit()?;
        Ok((u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("CRL number {n}")))?, revoked))
    }

    fn add_certificate(&self, c: &CertificateRecord) -> Result<(), StoreError> {
        let n = self.conn().execute(
            "INSERT INTO pki_certificates (serial, common_name, sans, not_after, issued_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (serial) DO NOTHING",
            params![c.serial, c.common_name, c.sans.join("\n"), c.not_after, c.issued_at],
        )?;
        if n == 0 {
            return Err(StoreError::AlreadyExists(format!("certificate {}", c.serial)));
        }
        Ok(())
    }

    fn list_certificates(&self) -> Result<Vec<CertificateRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT serial, common_name, sans, not_after, issued_at, revoked_at, revoke_reason
             FROM pki_certificates ORDER BY issued_at, serial",
        )?;
        let rows = stmt.query_map([], certificate_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn revoke_certificate(&self, serial: &str, reason: u8, now: i64) -> Result<CertificateRecord, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE pki_certificates SET revoked_at = ?2, revoke_reason = ?3 WHERE serial = ?1 AND revoked_at IS NULL",
            params![serial, now, i64::from(reason)],
        )?;
        let record = tx
            .query_row(
                "SELECT serial, common_name, sans, not_after, issued_at, revoked_at, revoke_reason
                 FROM pki_certificates WHERE serial = ?1",
                [serial],
                certificate_from_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound(format!("certificate {serial}")))?;
        tx.commit()?;
        Ok(record)
    }

    fn add_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        let n = self.conn().execute(
            "INSERT INTO api_tokens (id, name, secret_hash, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (id) DO NOTHING",
            params![t.id, t.name, t.secret_hash, t.created_at, t.expires_at],
        )?;
        if n == 0 {
            return Err(StoreError::AlreadyExists(format!("token {}", t.id)));
        }
        Ok(())
    }

    fn get_token(&self, id: &str) -> Result<TokenRecord, StoreError> {
        self.conn()
            .query_row(&format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = ?1"), [id], token_from_row)
            .optional()?
            .ok_or_else(|| StoreError::NotFound(format!("token {id}")))
    }

    fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id"))?;
        let rows = stmt.query_map([], token_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn revoke_tokens(&self, id_or_name: &str, now: i64) -> Result<Vec<TokenRecord>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let revoked = {
            let mut stmt = tx.prepare(&format!(
                "UPDATE api_tokens SET revoked_at = ?2 WHERE (id = ?1 OR name = ?1) AND revoked_at IS NULL
                 RETURNING {TOKEN_COLUMNS}"
            ))?;
            let rows = stmt.query_map(params![id_or_name, now], token_from_row)?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        tx.commit()?;
        Ok(revoked)
    }
}

fn certificate_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CertificateRecord> {
    let sans: String = r.get(2)?;
    Ok(CertificateRecord {
        serial: r.get(0)?,
        common_name: r.get(1)?,
        sans: sans.split('\n').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        not_after: r.get(3)?,
        issued_at: r.get(4)?,
        revoked_at: r.get(5)?,
        revoke_reason: r.get::<_, Option<i64>>(6)?.and_then(|v| u8::try_from(v).ok()),
    })
}

const TOKEN_COLUMNS: &str = "id, name, secret_hash, created_at, expires_at, revoked_at";

fn token_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        secret_hash: r.get(2)?,
        created_at: r.get(3)?,
        expires_at: r.get(4)?,
        revoked_at: r.get(5)?,
    })
}
