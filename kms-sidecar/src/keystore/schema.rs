//! Numbered schema migrations. Migration *n* (1-based) is `MIGRATIONS[n-1]`; a database
//! records each applied number in `schema_migrations`. Never edit a released migration:
//! append a new one.

/// One migration in each dialect.
pub(crate) struct Migration {
    pub(crate) sqlite: &'static str,
    pub(crate) postgres: &'static str,
}

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        sqlite: "
        CREATE TABLE keys (
            name                TEXT PRIMARY KEY,
            state               TEXT NOT NULL,
            delete_after        INTEGER,
            primary_version     INTEGER NOT NULL,
            min_decrypt_version INTEGER NOT NULL,
            created_at          INTEGER NOT NULL,
            row_version         INTEGER NOT NULL
        );
        CREATE TABLE key_versions (
            key_name         TEXT NOT NULL REFERENCES keys(name),
            version          INTEGER NOT NULL,
            wrapped_material BLOB,
            created_at       INTEGER NOT NULL,
            destroyed_at     INTEGER,
            PRIMARY KEY (key_name, version)
        );
        CREATE TABLE secrets (
            name       TEXT NOT NULL,
            version    INTEGER NOT NULL,
            key_name   TEXT NOT NULL,
            ciphertext BLOB NOT NULL,
            created_at INTEGER NOT NULL,
            PRIMARY KEY (name, version)
        );",
        postgres: "
        CREATE TABLE keys (
            name                TEXT PRIMARY KEY,
            state               TEXT NOT NULL,
            delete_after        BIGINT,
            primary_version     BIGINT NOT NULL,
            min_decrypt_version BIGINT NOT NULL,
            created_at          BIGINT NOT NULL,
            row_version         BIGINT NOT NULL
        );
        CREATE TABLE key_versions (
            key_name         TEXT NOT NULL REFERENCES keys(name),
            version          BIGINT NOT NULL,
            wrapped_material BYTEA,
            created_at       BIGINT NOT NULL,
            destroyed_at     BIGINT,
            PRIMARY KEY (key_name, version)
        );
        CREATE TABLE secrets (
            name       TEXT NOT NULL,
            version    BIGINT NOT NULL,
            key_name   TEXT NOT NULL,
            ciphertext BYTEA NOT NULL,
            created_at BIGINT NOT NULL,
            PRIMARY KEY (name, version)
        );",
    },
    Migration {
        // 2: the internal CA (one issuing CA, its chain, its key wrapped by the root key, the
        // CSR name policy, the CRL counter) and the inventory of issued certificates.
        sqlite: "
        CREATE TABLE pki_ca (
            id          INTEGER PRIMARY KEY CHECK (id = 1),
            certificate BLOB NOT NULL,
            parents     BLOB NOT NULL,
            wrapped_key BLOB NOT NULL,
            policy      TEXT NOT NULL,
            crl_number  INTEGER NOT NULL,
            created_at  INTEGER NOT NULL
        );
        CREATE TABLE pki_certificates (
            serial        TEXT PRIMARY KEY,
            common_name   TEXT NOT NULL,
            sans          TEXT NOT NULL,
            not_after     INTEGER NOT NULL,
            issued_at     INTEGER NOT NULL,
            revoked_at    INTEGER,
            revoke_reason INTEGER
        );",
        postgres: "
        CREATE TABLE pki_ca (
            id          INTEGER PRIMARY KEY CHECK (id = 1),
            certificate BYTEA NOT NULL,
            parents     BYTEA NOT NULL,
            wrapped_key BYTEA NOT NULL,
            policy      TEXT NOT NULL,
            crl_number  BIGINT NOT NULL,
            created_at  BIGINT NOT NULL
        );
        CREATE TABLE pki_certificates (
            serial        TEXT PRIMARY KEY,
            common_name   TEXT NOT NULL,
            sans          TEXT NOT NULL,
            not_after     BIGINT NOT NULL,
            issued_at     BIGINT NOT NULL,
            revoked_at    BIGINT,
            revoke_reason INTEGER
        );",
    },
    Migration {
        // 3: API tokens. Only a SHA-256 of the token's 256-bit secret is stored; the token
        // itself is shown once at creation.
        sqlite: "
        CREATE TABLE api_tokens (
            id          TEXT PRIMARY KEY,
            name        TEXT NOT NULL,
            secret_hash BLOB NOT NULL,
            created_at  INTEGER NOT NULL,
            expires_at  INTEGER,
            revoked_at  INTEGER
        );
        CREATE INDEX api_tokens_name ON api_tokens (name);",
        postgres: "
        CREATE TABLE api_tokens (
            id          TEXT PRIMARY KEY,
            name        TEXT NOT NULL,
            secret_hash BYTEA NOT NULL,
            created_at  BIGINT NOT NULL,
            expires_at  BIGINT,
            revoked_at  BIGINT
        );
        CREATE INDEX api_tokens_name ON api_tokens (name);",
    },
    Migration {
        // 4: automatic rotation. A key with a period gets a new primary version once its
        // current primary is that old (NULL: rotated only by hand).
        sqlite: "ALTER TABLE keys ADD COLUMN rotation_period INTEGER;",
        postgres: "ALTER TABLE keys ADD COLUMN rotation_period BIGINT;",
    },
];
