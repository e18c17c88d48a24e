//! Keystore records as a damaged or hostile database holds them. The input is a list of
//! rows, each a table selector byte and one value per column (NULL, integers, reals, text
//! that need not be UTF-8, blobs: SQLite stores any of them in any column), written
//! straight into the tables of a SQLite keystore (the project's schema, migrated by
//! `SqliteStore::open`) through a second connection with foreign keys off; rows that a
//! constraint refuses are skipped. Then:
//!
//! * every `KeyStore` method that decodes rows (`get_key`, `list_keys`, `key_count`,
//!   `get_secret` newest and by version, `list_secrets`, `schema_version`, `get_ca`,
//!   `list_certificates`, `crl_snapshot`, `next_crl_number`, `get_token`, `list_tokens`,
//!   `revoke_certificate`, `revoke_tokens`) returns `Ok` or a `StoreError`, never panics,
//!   never `Conflict`/`AlreadyExists`; what decodes is consistent (a key's versions
//!   ascending from 1, a rotation period above 0, `list_keys` agrees with `get_key`);
//! * the `Kms` on that store interprets what decoded (`describe_key`, `check_key_health`
//!   unwrapping the stored material under the root key, `encrypt`, `get_secret`
//!   decrypting the stored ciphertext, `next_rotation_at`, `verify_root`, `ca_info` and
//!   `crl` loading the stored CA, the lifecycle jobs `rotate_due_keys` and
//!   `purge_due_deletions`) without panicking;
//! * the pure column decoders get every value: `version_from_db` and
//!   `rotation_period_from_db` accept exactly the valid ranges and round-trip through
//!   their encoders, `state_from_columns` accepts only what `state_to_columns` writes,
//!   and `decode_parents` accepts only what `encode_parents` re-encodes to the same bytes.
//!
//! The root key is fixed, so seeds can carry material, a CA key and ciphertexts that
//! unwrap: `FUZZ_WRITE_SEEDS=DIR` writes seeds (a keystore built through the `Kms`,
//! dumped row by row) into DIR at start; that is how `seeds/keystore_records` was made.
//!
//! Value encoding: a tag byte (modulo 8): 0 NULL; 1 a small integer (next byte, signed);
//! 2 an integer (8 bytes, little-endian); 3 a boundary integer (next byte picks one); 4
//! text and 5 a blob (2-byte little-endian length, then the bytes); 6 a real (8 bytes);
//! 7 a word the keystore uses (next byte picks one).
#![no_main]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use kms_sidecar::keystore::{
    self, CertificateRecord, KeyStore, SqliteStore, StoreError, TokenRecord, decode_parents, encode_parents,
    rotation_period_from_db, rotation_period_to_db, state_from_columns, state_to_columns, version_from_db,
};
use kms_sidecar::kms::{Kms, KmsOptions};
use kms_sidecar::root_key::LocalRootKey;
use libfuzzer_sys::fuzz_target;
use rusqlite::types::{ToSqlOutput, ValueRef};

/// Tables and their columns, in schema order (migrations 1 to 4).
const TABLES: [(&str, usize); 7] = [
    ("keys", 8),
    ("key_versions", 5),
    ("secrets", 5),
    ("pki_ca", 7),
    ("pki_certificates", 7),
    ("api_tokens", 6),
    ("schema_migrations", 2),
];
/// Columns whose text values are looked up: (table, column).
const KEY_NAMES: [(usize, usize); 2] = [(0, 0), (1, 0)];
const SECRET_NAME: (usize, usize) = (2, 0);
const SECRET_VERSION: (usize, usize) = (2, 1);
const SERIAL: (usize, usize) = (4, 0);
const TOKEN_ID: (usize, usize) = (5, 0);
const TOKEN_NAME: (usize, usize) = (5, 1);
const BOUNDARIES: [i64; 10] =
    [0, 1, -1, u32::MAX as i64, u32::MAX as i64 + 1, i64::MAX, i64::MIN, i32::MAX as i64, 4_000_000_000, 1 << 53];
const WORDS: [&str; 10] = [
    "app/db",
    "enabled",
    "disabled",
    "pending_deletion",
    "destroyed",
    "app/password",
    "7E57000000000001",
    "00112233445566aa",
    "dns:web.tenant-a.svc",
    "",
];
const ROOT_KEY: [u8; 32] = [0x42; 32];

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(b) => ValueRef::Text(b),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes(&mut self, n: usize) -> &[u8] {
        let (head, tail) = self.0.split_at(n.min(self.0.len()));
        self.0 = tail;
        head
    }

    fn byte(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let b = self.bytes(N);
        out[..b.len()].copy_from_slice(b);
        out
    }

    fn value(&mut self) -> Value {
        match self.byte() % 8 {
            0 => Value::Null,
            1 => Value::Int(i64::from(self.byte() as i8)),
            2 => Value::Int(i64::from_le_bytes(self.array())),
            3 => Value::Int(BOUNDARIES[usize::from(self.byte()) % BOUNDARIES.len()]),
            t @ (4 | 5) => {
                let len = usize::from(u16::from_le_bytes(self.array()));
                let b = self.bytes(len).to_vec();
                if t == 4 { Value::Text(b) } else { Value::Blob(b) }
            }
            6 => Value::Real(f64::from_le_bytes(self.array())),
            _ => Value::Text(WORDS[usize::from(self.byte()) % WORDS.len()].as_bytes().to_vec()),
        }
    }
}

/// The rows of an input: (table index, values).
fn rows(data: &[u8]) -> Vec<(usize, Vec<Value>)> {
    let mut r = Reader(data);
    let mut out = Vec::new();
    while !r.0.is_empty() {
        let table = usize::from(r.byte()) % TABLES.len();
        let values = (0..TABLES[table].1).map(|_| r.value()).collect();
        out.push((table, values));
    }
    out
}

struct Fixture {
    store: Arc<SqliteStore>,
    kms: Kms,
    writer: Mutex<rusqlite::Connection>,
}

fn open(dir: &Path) -> (Arc<SqliteStore>, Kms) {
    let root_path = dir.join("root.key");
    if !root_path.exists() {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&root_path).expect("root");
        f.write_all(&ROOT_KEY).expect("root key");
    }
    let root = LocalRootKey::load_or_create(&root_path, false).expect("root key");
    let store = Arc::new(SqliteStore::open(dir.join("keystore.db")).expect("keystore"));
    // No record cache: every call reads what this input wrote.
    let options = KmsOptions { key_cache_ttl: Duration::ZERO, kek_cache_capacity: 16 };
    let kms = Kms::with_options(store.clone() as Arc<dyn KeyStore>, root, options);
    (store, kms)
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = common::temp_dir("cryptocore-fuzz-keystore-");
        if let Some(out) = std::env::var_os("FUZZ_WRITE_SEEDS") {
            write_seeds(&dir.join("seeds"), Path::new(&out));
        }
        let (store, kms) = open(&dir);
        let writer = rusqlite::Connection::open(dir.join("keystore.db")).expect("second connection");
        writer.execute_batch("PRAGMA synchronous=OFF; PRAGMA foreign_keys=OFF;").expect("pragma");
        Fixture { store, kms, writer: Mutex::new(writer) }
    })
}

/// Replaces every table's contents with `rows` (rows a constraint refuses are skipped).
fn load(conn: &mut rusqlite::Connection, rows: &[(usize, Vec<Value>)]) {
    let tx = conn.transaction().expect("begin");
    for (t, _) in TABLES {
        tx.execute(&format!("DELETE FROM {t}"), []).expect("delete");
    }
    for (table, values) in rows {
        let (name, n) = TABLES[*table];
        let marks = (1..=n).map(|i| format!("?{i}")).collect::<Vec<_>>().join(",");
        let sql = format!("INSERT INTO {name} VALUES ({marks})");
        let _ = tx.execute(&sql, rusqlite::params_from_iter(values.iter()));
    }
    tx.commit().expect("commit");
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::Text(b) | Value::Blob(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// `extra`, then the values of the columns `cols` ((table, column) pairs) as text,
/// deduplicated, at most 8 in all.
fn column(rows: &[(usize, Vec<Value>)], cols: &[(usize, usize)], extra: &str) -> Vec<String> {
    let mut out = vec![extra.to_owned()];
    for (t, values) in rows {
        for &(table, col) in cols {
            if *t == table
                && let Some(s) = text(&values[col])
                && !out.contains(&s)
                && out.len() < 8
            {
                out.push(s);
            }
        }
    }
    out
}

/// A read may fail only as a read fails: not found, corrupt data, the backend.
fn read_error(e: &StoreError) {
    assert!(!matches!(e, StoreError::Conflict(_) | StoreError::AlreadyExists(_)), "{e:?}");
}

fn check<T>(r: Result<T, StoreError>) -> Option<T> {
    r.map_err(|e| read_error(&e)).ok()
}

fn check_key(name: &str, k: &keystore::KeyRecord) {
    assert_eq!(k.name, name);
    assert!(k.primary_version > 0 && k.min_decrypt_version > 0);
    assert!(k.rotation_period.is_none_or(|p| p > 0));
    assert!(k.versions.windows(2).all(|w| w[0].version < w[1].version), "versions out of order");
    assert!(k.versions.iter().all(|v| v.version > 0));
}

/// The pure decoders on one value, with their round-trip properties.
fn decoders(v: &Value, last_int: Option<i64>) {
    match v {
        Value::Int(i) => {
            let i = *i;
            match version_from_db(i) {
                Ok(version) => assert_eq!(i64::from(version), i),
                Err(e) => {
                    assert!(i <= 0 || i > i64::from(u32::MAX), "{i} refused");
                    assert!(matches!(e, StoreError::Corrupt(_)));
                }
            }
            match rotation_period_from_db(Some(i)) {
                Ok(Some(p)) => {
                    assert!(i > 0);
                    assert_eq!(rotation_period_to_db(Some(p)), Some(i));
                }
                Ok(None) => panic!("a value decoded as no rotation period"),
                Err(_) => assert!(i <= 0),
            }
        }
        Value::Null => assert_eq!(rotation_period_from_db(None).ok(), Some(None)),
        Value::Text(b) | Value::Blob(b) => {
            if let Ok(parents) = decode_parents(b) {
                assert_eq!(&encode_parents(&parents), b, "parents do not re-encode to the stored bytes");
            }
            if let Ok(s) = std::str::from_utf8(b) {
                for delete_after in [None, last_int] {
                    if let Ok(state) = state_from_columns(s, delete_after) {
                        let (name, after) = state_to_columns(state);
                        assert_eq!(name, s, "state {state:?} is stored under another name");
                        if name == "pending_deletion" {
                            assert_eq!(after, delete_after);
                        }
                    }
                }
            }
        }
        Value::Real(_) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let fx = fixture();
    let rows = rows(data);
    let mut last_int = None;
    for (_, values) in &rows {
        for v in values {
            decoders(v, last_int);
            if let Value::Int(i) = v {
                last_int = Some(*i);
            }
        }
    }
    load(&mut fx.writer.lock().unwrap_or_else(|p| p.into_inner()), &rows);
    let store = &*fx.store;

    let keys = column(&rows, &KEY_NAMES, "app/db");
    for name in &keys {
        if let Some(k) = check(store.get_key(name)) {
            check_key(name, &k);
        }
    }
    if let Some(all) = check(store.list_keys()) {
        assert!(all.windows(2).all(|w| w[0].name < w[1].name), "list_keys not sorted");
        for k in &all {
            check_key(&k.name, k);
            assert_eq!(store.get_key(&k.name).ok().as_ref(), Some(k), "list_keys and get_key disagree");
        }
    }
    check(store.key_count());
    let secrets = column(&rows, &[SECRET_NAME], "app/password");
    let versions = column(&rows, &[SECRET_VERSION], "1");
    for name in &secrets {
        if let Some(s) = check(store.get_secret(name, None)) {
            assert_eq!(&s.name, name);
        }
        for v in versions.iter().filter_map(|v| v.parse::<u32>().ok()) {
            if let Some(s) = check(store.get_secret(name, Some(v))) {
                assert_eq!(s.version, v);
            }
        }
    }
    if let Some(all) = check(store.list_secrets()) {
        assert!(all.iter().all(|s| s.latest_version > 0));
    }
    check(store.schema_version());
    check(store.get_ca());
    check(store.list_certificates());
    check(store.crl_snapshot());
    check(store.next_crl_number());
    for id in column(&rows, &[TOKEN_ID], "00112233445566aa") {
        if let Some(t) = check(store.get_token(&id)) {
            assert_eq!(t.id, id);
        }
    }
    check(store.list_tokens());
    // Writes that decode the rows they change: two of each (a write transaction is the
    // dearest step here).
    for serial in column(&rows, &[SERIAL], "7E57000000000001").iter().take(2) {
        check(store.revoke_certificate(serial, 1, 1_800_000_000));
    }
    for id in column(&rows, &[TOKEN_ID, TOKEN_NAME], "ci").iter().take(2) {
        check(store.revoke_tokens(id, 1_800_000_000));
    }

    // The KMS over what decoded: errors are fine, panics are not.
    let kms = &fx.kms;
    kms.forget_all_keks();
    let ctx = BTreeMap::from([("tenant".to_owned(), "a".to_owned())]);
    for name in &keys {
        if let Ok(k) = kms.describe_key(name) {
            let _ = kms_sidecar::kms::next_rotation_at(&k);
        }
        let _ = kms.check_key_health(name);
        if let Ok((ciphertext, _)) = kms.encrypt(name, b"fuzz", &ctx) {
            let _ = kms.decrypt(&ciphertext, &ctx);
        }
    }
    for name in &secrets {
        let _ = kms.get_secret(name, None);
    }
    let _ = kms.verify_root();
    let _ = kms.ca_info();
    let _ = kms.crl();
    let now = kms.now();
    let _ = kms.rotate_due_keys(now);
    let _ = kms.purge_due_deletions(now);
});

/// Builds a keystore through the `Kms` (keys in every state, a secret, the CA with an
/// inventory, tokens) and writes its rows as seeds: all of it, and each table alone.
fn write_seeds(dir: &Path, out: &Path) {
    std::fs::create_dir_all(dir).expect("seed store dir");
    std::fs::create_dir_all(out).expect("seed dir");
    let (store, kms) = open(dir);
    kms.create_key("app/db").expect("key");
    kms.rotate_key("app/db").expect("rotate");
    kms.set_rotation_period("app/db", Some(3_600)).expect("period");
    kms.set_min_decrypt_version("app/db", 2).expect("min");
    kms.create_key("app/old").expect("key");
    kms.rotate_key("app/old").expect("rotate");
    store.destroy_version("app/old", 1, 1_700_000_000).expect("destroy");
    kms.create_key("app/pending").expect("key");
    kms.schedule_key_deletion("app/pending", 0).expect("schedule");
    kms.create_key("app/disabled").expect("key");
    kms.disable_key("app/disabled").expect("disable");
    kms.put_secret("app/password", "app/db", b"first").expect("secret");
    kms.put_secret("app/password", "app/db", b"second").expect("secret");
    let policy = crypto_core::pki::SanPolicy {
        dns: vec!["*.tenant-a.svc".into()],
        ip: vec![("10.0.0.0".parse().expect("ip"), 8)],
        uri_prefixes: vec!["spiffe://c.local/".into()],
    };
    let init = kms_sidecar::ca::CaInit {
        common_name: "Seed CA".into(),
        key_type: crypto_core::pki::KeyType::EcdsaP256,
        ttl: Duration::from_secs(10 * 365 * 86_400),
        policy,
    };
    kms.init_ca(&init).expect("CA");
    for (serial, revoked) in [("7E57000000000001", false), ("7E57000000000002", true)] {
        let record = CertificateRecord {
            serial: serial.into(),
            common_name: "web.tenant-a.svc".into(),
            sans: vec!["dns:web.tenant-a.svc".into(), "ip:10.1.2.3".into()],
            not_after: 4_000_000_000,
            issued_at: 1_700_000_000,
            revoked_at: None,
            revoke_reason: None,
        };
        store.add_certificate(&record).expect("inventory");
        if revoked {
            store.revoke_certificate(serial, 1, 1_700_000_001).expect("revoke");
        }
    }
    for (id, name) in [("00112233445566aa", "ci"), ("00112233445566bb", "old-ci")] {
        let token = TokenRecord {
            id: id.into(),
            name: name.into(),
            secret_hash: vec![0x11; 32],
            created_at: 1_700_000_000,
            expires_at: Some(4_000_000_000),
            revoked_at: None,
        };
        store.add_token(&token).expect("token");
    }
    store.revoke_tokens("00112233445566bb", 1_700_000_001).expect("revoke token");

    let conn = rusqlite::Connection::open(dir.join("keystore.db")).expect("connection");
    let mut all = Vec::new();
    for (i, (table, _)) in TABLES.iter().enumerate() {
        let mut seed = Vec::new();
        let mut stmt = conn.prepare(&format!("SELECT * FROM {table}")).expect("select");
        let n = stmt.column_count();
        let mut rows = stmt.query([]).expect("query");
        while let Some(row) = rows.next().expect("row") {
            seed.push(i as u8);
            for c in 0..n {
                encode(&mut seed, row.get_ref(c).expect("column"));
            }
        }
        std::fs::write(out.join(*table), &seed).expect("seed");
        all.extend_from_slice(&seed);
    }
    std::fs::write(out.join("all"), &all).expect("seed");
    drop(conn);
    let _ = std::fs::remove_dir_all(dir);
}

/// One column value in the input encoding.
fn encode(out: &mut Vec<u8>, v: ValueRef<'_>) {
    match v {
        ValueRef::Null => out.push(0),
        ValueRef::Integer(i) => {
            out.push(2);
            out.extend_from_slice(&i.to_le_bytes());
        }
        ValueRef::Real(f) => {
            out.push(6);
            out.extend_from_slice(&f.to_le_bytes());
        }
        ValueRef::Text(b) | ValueRef::Blob(b) => {
            out.push(if matches!(v, ValueRef::Text(_)) { 4 } else { 5 });
            out.extend_from_slice(&(b.len() as u16).to_le_bytes());
            out.extend_from_slice(b);
        }
    }
}
