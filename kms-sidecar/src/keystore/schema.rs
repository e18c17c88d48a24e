//! Numbered schema migrations. Migration *n* (1-based) is `MIGRATIONS[n-1]`; a database
//! records each applied number in `schema_migrations`. Never edit a released migration:
//! append a new one.

/// One migration in each dialect.
pub(crate) struct Migration {
    pub(crate) sqlite: &'static str,
    pub(crate) postgres: &'static str,
}

pub(crate) const MIGRATIONS: &[Migration] = &[Migration {
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
}];
