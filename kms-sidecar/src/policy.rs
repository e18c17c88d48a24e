//! Authorization: a TOML policy of roles (operations on resource patterns) bound to
//! principals. **Default deny**: a request is allowed only when some role bound to one of
//! the caller's principal names grants its operation on its resource.
//!
//! ```toml
//! [roles.tenant-a-app]
//! grants = [
//!   { operations = ["encrypt", "decrypt", "datakey"], keys = ["tenant-a/**"] },
//!   { operations = ["secrets-read"], secrets = ["tenant-a/**"] },
//! ]
//!
//! [roles.tenant-a-certs]
//! grants = [{ operations = ["pki-issue"], names = ["dns:*.tenant-a.svc.cluster.local"] }]
//!
//! [roles.operator]
//! grants = [{ operations = ["*"], keys = ["**"], secrets = ["**"], names = ["**"] }]
//!
//! [[bindings]]
//! principals = ["cert:spiffe://prod/ns/tenant-a/*", "token:tenant-a-ci"]
//! roles = ["tenant-a-app", "tenant-a-certs"]
//!
//! [[bindings]]
//! principals = ["unix:uid=0"]
//! roles = ["operator"]
//! ```
//!
//! **Operations** and the resource each is checked on:
//!
//! | operation | RPCs | resource |
//! |---|---|---|
//! | `encrypt` | Encrypt, BatchEncrypt, EncryptStream; PutSecret (its key) | key name |
//! | `decrypt` | Decrypt, BatchDecrypt, DecryptStream | key name in the ciphertext header |
//! | `rewrap` | ReEncrypt, ReEncryptDataKey | key name in the header |
//! | `datakey` | GenerateDataKey, DecryptDataKey | key name |
//! | `admin` | CreateKey, RotateKey, Enable/DisableKey, Schedule/CancelKeyDeletion, SetMinDecryptVersion, SetRotationPeriod | key name |
//! | any of the above | DescribeKey; ListKeys shows only such keys | key name |
//! | `secrets-read` | GetSecret; ListSecrets shows only such secrets | secret name |
//! | `secrets-write` | PutSecret, DeleteSecret | secret name |
//! | `pki-issue` | IssueCertificate, SignCsr | every requested name: `cn:…`, `dns:…`, `ip:…`, `uri:…` |
//! | `pki-admin` | InitCa, RevokeCertificate, ListCertificates | none |
//! | `token-admin` | CreateToken, RevokeToken; ListTokens shows only such tokens | token name |
//! | `audit-read` | AuditHead | none |
//! | `password` | HashPassword, VerifyPassword | none |
//!
//! GetCaBundle, GetCrl, WhoAmI and the health service are open to every authenticated
//! caller (they reveal nothing secret). `"*"` as an operation means every operation on the
//! kinds of resource the grant lists (`keys`, `secrets`, `names`, `tokens`); the global
//! operations `pki-admin`, `audit-read` and `password` must always be named. Note that
//! `token-admin` on a name lets the holder act as `token:<name>`, and `pki-issue` on
//! `uri:`/`cn:` names lets the holder obtain `cert:`/`cert-cn:` identities from the
//! sidecar's CA: grant both as narrowly as the identities they amount to.
//!
//! **Patterns** (principals and resources): `*` matches any run of characters except `/`,
//! `**` any run including `/`, `?` one character other than `/`; everything else matches
//! itself. So `tenant-a/*` covers `tenant-a/db` but not `tenant-a/x/y` (use `tenant-a/**`),
//! and never `tenant-ab/…`. Key names cannot contain `*` or `?`, so a pattern never
//! matches more than it says.
//!
//! Principal names: `unix:uid=N` and `unix:gid=N` (Unix socket peer credentials),
//! `cert:<URI SAN>` and `cert-cn:<CN>` (mTLS client certificate), `token:<name>` (an API
//! token), `anonymous` (a TLS connection without client certificate or token).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// An operation a policy grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// Encrypt under a key.
    Encrypt,
    /// Decrypt a ciphertext of a key.
    Decrypt,
    /// Re-wrap a ciphertext or data key to its key's primary version.
    Rewrap,
    /// Generate or decrypt data keys of a key.
    DataKey,
    /// Key lifecycle administration.
    Admin,
    /// Issue certificates for names.
    PkiIssue,
    /// CA administration.
    PkiAdmin,
    /// Read secrets.
    SecretsRead,
    /// Write and delete secrets.
    SecretsWrite,
    /// Read the audit chain head.
    AuditRead,
    /// Create, list and revoke API tokens.
    TokenAdmin,
    /// Hash and verify passwords.
    Password,
}

impl Op {
    /// Every operation.
    pub const ALL: [Op; 12] = [
        Op::Encrypt,
        Op::Decrypt,
        Op::Rewrap,
        Op::DataKey,
        Op::Admin,
        Op::PkiIssue,
        Op::PkiAdmin,
        Op::SecretsRead,
        Op::SecretsWrite,
        Op::AuditRead,
        Op::TokenAdmin,
        Op::Password,
    ];

    /// The operation's name in policy files.
    pub fn name(self) -> &'static str {
        match self {
            Op::Encrypt => "encrypt",
            Op::Decrypt => "decrypt",
            Op::Rewrap => "rewrap",
            Op::DataKey => "datakey",
            Op::Admin => "admin",
            Op::PkiIssue => "pki-issue",
            Op::PkiAdmin => "pki-admin",
            Op::SecretsRead => "secrets-read",
            Op::SecretsWrite => "secrets-write",
            Op::AuditRead => "audit-read",
            Op::TokenAdmin => "token-admin",
            Op::Password => "password",
        }
    }

    fn parse(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|o| o.name() == name)
    }

    fn kind(self) -> ResourceKind {
        match self {
            Op::Encrypt | Op::Decrypt | Op::Rewrap | Op::DataKey | Op::Admin => ResourceKind::Key,
            Op::SecretsRead | Op::SecretsWrite => ResourceKind::Secret,
            Op::PkiIssue => ResourceKind::Name,
            Op::TokenAdmin => ResourceKind::Token,
            Op::PkiAdmin | Op::AuditRead | Op::Password => ResourceKind::None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResourceKind {
    Key,
    Secret,
    Name,
    Token,
    None,
}

/// What an operation is checked on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    /// A key name.
    Key(&'a str),
    /// A secret name.
    Secret(&'a str),
    /// A certificate name (`cn:…`, `dns:…`, `ip:…`, `uri:…`).
    Name(&'a str),
    /// An API token's name.
    Token(&'a str),
    /// No resource (global operations).
    None,
}

impl Resource<'_> {
    fn kind(&self) -> ResourceKind {
        match self {
            Resource::Key(_) => ResourceKind::Key,
            Resource::Secret(_) => ResourceKind::Secret,
            Resource::Name(_) => ResourceKind::Name,
            Resource::Token(_) => ResourceKind::Token,
            Resource::None => ResourceKind::None,
        }
    }
}

/// Why a policy file was refused (the previous policy stays in force on reload).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file could not be read.
    #[error("policy file {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid policy.
    #[error("policy: {0}")]
    Invalid(String),
}

/// A glob pattern (see the module documentation), classified once so that the common
/// shapes (an exact name, `**`, `prefix/**`) match without the general algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    shape: Shape,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    /// No wildcard: equality.
    Exact,
    /// `**`: everything.
    All,
    /// `<literal>**`: a prefix.
    Prefix(usize),
    /// Anything else: the general matcher.
    Glob,
}

impl Pattern {
    /// A pattern; refuses an empty one.
    pub fn new(text: &str) -> Result<Self, PolicyError> {
        if text.is_empty() || text.len() > 1024 {
            return Err(PolicyError::Invalid("a pattern must be 1 to 1024 characters".into()));
        }
        Ok(Self::from_text(text.to_owned()))
    }

    fn from_text(text: String) -> Self {
        let wild = |b: &u8| *b == b'*' || *b == b'?';
        let shape = if !text.bytes().any(|b| wild(&b)) {
            Shape::Exact
        } else if text == "**" {
            Shape::All
        } else if let Some(prefix) = text.strip_suffix("**")
            && !prefix.bytes().any(|b| wild(&b))
        {
            Shape::Prefix(prefix.len())
        } else {
            Shape::Glob
        };
        Self { text, shape }
    }

    /// Whether `text` matches.
    pub fn matches(&self, text: &str) -> bool {
        match self.shape {
            Shape::Exact => self.text == text,
            Shape::All => true,
            Shape::Prefix(n) => text.as_bytes().starts_with(&self.text.as_bytes()[..n]),
            Shape::Glob => glob(self.text.as_bytes(), text.as_bytes()),
        }
    }
}

/// Iterative glob matching with backtracking over the last star; linear-ish, no recursion.
fn glob(p: &[u8], t: &[u8]) -> bool {
    // Split into tokens first: `**`, `*`, `?`, literal byte.
    #[derive(Clone, Copy, PartialEq)]
    enum Tok {
        Any,
        Star,
        One,
        Lit(u8),
    }
    let mut toks = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'*' if p.get(i + 1) == Some(&b'*') => {
                toks.push(Tok::Any);
                i += 2;
            }
            b'*' => {
                toks.push(Tok::Star);
                i += 1;
            }
            b'?' => {
                toks.push(Tok::One);
                i += 1;
            }
            c => {
                toks.push(Tok::Lit(c));
                i += 1;
            }
        }
    }
    // Dynamic programming over (token, text position): O(len(p) × len(t)), bounded by the
    // pattern and name limits, never exponential.
    let mut cur = vec![false; t.len() + 1];
    cur[0] = true;
    for tok in toks {
        let mut next = vec![false; t.len() + 1];
        match tok {
            Tok::Any => {
                let mut reach = false;
                for j in 0..=t.len() {
                    reach |= cur[j];
                    next[j] = reach;
                }
            }
            Tok::Star => {
                let mut reach = false;
                for j in 0..=t.len() {
                    if j > 0 && t[j - 1] == b'/' {
                        reach = false;
                    }
                    reach |= cur[j];
                    next[j] = reach;
                }
            }
            Tok::One => {
                for j in 1..=t.len() {
                    next[j] = cur[j - 1] && t[j - 1] != b'/';
                }
            }
            Tok::Lit(c) => {
                for j in 1..=t.len() {
                    next[j] = cur[j - 1] && t[j - 1] == c;
                }
            }
        }
        cur = next;
    }
    cur[t.len()]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGrant {
    operations: Vec<String>,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    secrets: Vec<String>,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    tokens: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRole {
    grants: Vec<FileGrant>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBinding {
    principals: Vec<String>,
    roles: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePolicy {
    #[serde(default)]
    roles: BTreeMap<String, FileRole>,
    #[serde(default)]
    bindings: Vec<FileBinding>,
}

#[derive(Debug, Clone)]
struct Grant {
    ops: Vec<Op>,
    keys: Vec<Pattern>,
    secrets: Vec<Pattern>,
    names: Vec<Pattern>,
    tokens: Vec<Pattern>,
}

impl Grant {
    fn allows(&self, op: Op, resource: &Resource<'_>) -> bool {
        if !self.ops.contains(&op) {
            return false;
        }
        match resource {
            Resource::Key(k) => self.keys.iter().any(|p| p.matches(k)),
            Resource::Secret(s) => self.secrets.iter().any(|p| p.matches(s)),
            Resource::Name(n) => self.names.iter().any(|p| p.matches(n)),
            Resource::Token(t) => self.tokens.iter().any(|p| p.matches(t)),
            Resource::None => true,
        }
    }
}

#[derive(Debug, Clone)]
struct Binding {
    principals: Vec<Pattern>,
    grants: Vec<Grant>,
}

/// A loaded policy.
#[derive(Debug, Clone)]
pub struct Policy {
    bindings: Vec<Binding>,
    source: String,
}

impl Policy {
    /// Parses and validates a policy: unknown keys, unknown operations, roles without
    /// grants, key operations without `keys` (and so on), bindings naming unknown roles
    /// are all errors.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let file: FilePolicy = toml::from_str(text).map_err(|e| PolicyError::Invalid(e.to_string()))?;
        let mut roles = BTreeMap::new();
        for (name, role) in file.roles {
            if role.grants.is_empty() {
                return Err(PolicyError::Invalid(format!("role {name:?} has no grants")));
            }
            let mut grants = Vec::new();
            for g in role.grants {
                let mut ops = Vec::new();
                for o in &g.operations {
                    if o == "*" {
                        // Every operation on the kinds of resource the grant lists; the
                        // global ones (pki-admin, audit-read, password) only when named.
                        let listed = |kind| match kind {
                            ResourceKind::Key => !g.keys.is_empty(),
                            ResourceKind::Secret => !g.secrets.is_empty(),
                            ResourceKind::Name => !g.names.is_empty(),
                            ResourceKind::Token => !g.tokens.is_empty(),
                            ResourceKind::None => false,
                        };
                        ops.extend(Op::ALL.into_iter().filter(|op| listed(op.kind())));
                    } else {
                        ops.push(Op::parse(o).ok_or_else(|| {
                            PolicyError::Invalid(format!(
                                "role {name:?}: unknown operation {o:?} (known: {})",
                                Op::ALL.map(Op::name).join(", ")
                            ))
                        })?);
                    }
                }
                if ops.is_empty() {
                    return Err(PolicyError::Invalid(format!(
                        "role {name:?}: a grant without operations (\"*\" covers only the kinds of resource listed)"
                    )));
                }
                let patterns = |list: &[String]| list.iter().map(|p| Pattern::new(p)).collect::<Result<Vec<_>, _>>();
                let grant = Grant {
                    keys: patterns(&g.keys)?,
                    secrets: patterns(&g.secrets)?,
                    names: patterns(&g.names)?,
                    tokens: patterns(&g.tokens)?,
                    ops,
                };
                for (kind, list, field) in [
                    (ResourceKind::Key, &grant.keys, "keys"),
                    (ResourceKind::Secret, &grant.secrets, "secrets"),
                    (ResourceKind::Name, &grant.names, "names"),
                    (ResourceKind::Token, &grant.tokens, "tokens"),
                ] {
                    // An operation named explicitly (not through "*") needs its resources.
                    let explicit = g.operations.iter().any(|o| Op::parse(o).is_some_and(|op| op.kind() == kind));
                    if explicit && list.is_empty() {
                        return Err(PolicyError::Invalid(format!(
                            "role {name:?}: a grant of {} operations needs `{field}` patterns",
                            field.trim_end_matches('s')
                        )));
                    }
                }
                grants.push(grant);
            }
            roles.insert(name, grants);
        }
        let mut bindings = Vec::new();
        for (i, b) in file.bindings.into_iter().enumerate() {
            if b.principals.is_empty() || b.roles.is_empty() {
                return Err(PolicyError::Invalid(format!("binding {}: principals and roles are required", i + 1)));
            }
            let mut grants = Vec::new();
            for r in &b.roles {
                grants.extend(
                    roles
                        .get(r)
                        .ok_or_else(|| PolicyError::Invalid(format!("binding {}: unknown role {r:?}", i + 1)))?
                        .iter()
                        .cloned(),
                );
            }
            let principals = b.principals.iter().map(|p| Pattern::new(p)).collect::<Result<Vec<_>, _>>()?;
            bindings.push(Binding { principals, grants });
        }
        Ok(Self { bindings, source: "file".into() })
    }

    /// Loads a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| PolicyError::Read { path: path.to_path_buf(), source })?;
        let mut p = Self::parse(&text)?;
        p.source = path.display().to_string();
        Ok(p)
    }

    /// The policy used when no file is configured: the Unix user the sidecar runs as
    /// (`unix:uid=<own uid>`) may do everything; nobody else may do anything.
    pub fn owner_only(uid: u32) -> Self {
        let all = Pattern::from_text("**".into());
        Self {
            bindings: vec![Binding {
                principals: vec![Pattern::from_text(format!("unix:uid={uid}"))],
                grants: vec![Grant {
                    ops: Op::ALL.to_vec(),
                    keys: vec![all.clone()],
                    secrets: vec![all.clone()],
                    names: vec![all.clone()],
                    tokens: vec![all],
                }],
            }],
            source: format!("built-in: only unix:uid={uid}"),
        }
    }

    /// Where the policy came from (for logs).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether a caller with principal `names` may do `op` on `resource`. A resource of
    /// the wrong kind for the operation is never allowed.
    pub fn allows(&self, names: &[String], op: Op, resource: &Resource<'_>) -> bool {
        if op.kind() != resource.kind() {
            return false;
        }
        self.bindings
            .iter()
            .filter(|b| b.principals.iter().any(|p| names.iter().any(|n| p.matches(n))))
            .any(|b| b.grants.iter().any(|g| g.allows(op, resource)))
    }

    /// Whether some grant gives the caller `op` on some resource (SignCsr: the names are
    /// known only after parsing, each is then checked with [`Policy::allows`]).
    pub fn allows_op_somewhere(&self, names: &[String], op: Op) -> bool {
        self.bindings
            .iter()
            .filter(|b| b.principals.iter().any(|p| names.iter().any(|n| p.matches(n))))
            .any(|b| b.grants.iter().any(|g| g.ops.contains(&op)))
    }

    /// Whether the caller may do anything at all with key `key` (DescribeKey, ListKeys).
    pub fn allows_any_on_key(&self, names: &[String], key: &str) -> bool {
        Op::ALL
            .into_iter()
            .filter(|o| o.kind() == ResourceKind::Key)
            .any(|o| self.allows(names, o, &Resource::Key(key)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn fast_paths_agree_with_the_general_matcher() {
        for p in ["exact", "**", "tenant-a/**", "tenant-a/*", "a*b", "k?y", "x**y", "**/z"] {
            let pat = Pattern::new(p).unwrap();
            for t in
                ["exact", "exac", "tenant-a/x", "tenant-a/x/y", "tenant-ab/x", "", "ab", "key", "xy", "x/q/y", "a/z"]
            {
                assert_eq!(pat.matches(t), glob(p.as_bytes(), t.as_bytes()), "{p} vs {t}");
            }
        }
    }

    #[test]
    fn globs() {
        let m = |p: &str, t: &str| Pattern::new(p).unwrap().matches(t);
        assert!(m("tenant-a/*", "tenant-a/db"));
        assert!(!m("tenant-a/*", "tenant-a/db/x"));
        assert!(m("tenant-a/**", "tenant-a/db/x"));
        assert!(!m("tenant-a/*", "tenant-ab/db"));
        assert!(!m("tenant-a/**", "tenant-ab/db"));
        assert!(m("tenant-a/*", "tenant-a/x"));
        assert!(m("exact", "exact"));
        assert!(!m("exact", "exact2"));
        assert!(m("k?y", "key"));
        assert!(!m("k?y", "k/y"));
        assert!(m("**", "anything/at/all"));
        assert!(m("cert:spiffe://prod/ns/tenant-a/*", "cert:spiffe://prod/ns/tenant-a/app"));
        assert!(!m("cert:spiffe://prod/ns/tenant-a/*", "cert:spiffe://prod/ns/tenant-b/app"));
        assert!(m("dns:*.tenant-a.svc", "dns:db.tenant-a.svc"));
        assert!(!m("dns:*.tenant-a.svc", "dns:db.tenant-b.svc"));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxbyy"));
        // No exponential blow-up on adversarial input.
        let long = "a".repeat(1000);
        assert!(!m(&"*a".repeat(100), &(long + "b")));
    }

    const POLICY: &str = r#"
        [roles.app-a]
        grants = [{ operations = ["encrypt", "decrypt"], keys = ["tenant-a/**"] },
                  { operations = ["secrets-read"], secrets = ["tenant-a/*"] }]
        [roles.admin]
        grants = [{ operations = ["*", "pki-admin"], keys = ["**"], secrets = ["**"], names = ["**"], tokens = ["**"] }]
        [roles.hasher]
        grants = [{ operations = ["password"] }]
        [[bindings]]
        principals = ["token:app-a", "cert:spiffe://prod/tenant-a/*"]
        roles = ["app-a", "hasher"]
        [[bindings]]
        principals = ["unix:gid=0"]
        roles = ["admin"]
    "#;

    #[test]
    fn default_deny_and_grants() {
        let p = Policy::parse(POLICY).unwrap();
        let a = vec!["token:app-a".to_owned()];
        assert!(p.allows(&a, Op::Encrypt, &Resource::Key("tenant-a/db")));
        assert!(p.allows(&a, Op::Decrypt, &Resource::Key("tenant-a/x/y")));
        assert!(!p.allows(&a, Op::Admin, &Resource::Key("tenant-a/db")));
        assert!(!p.allows(&a, Op::Encrypt, &Resource::Key("tenant-b/db")));
        assert!(!p.allows(&a, Op::Encrypt, &Resource::Secret("tenant-a/db")), "wrong resource kind");
        assert!(p.allows(&a, Op::SecretsRead, &Resource::Secret("tenant-a/pw")));
        assert!(!p.allows(&a, Op::SecretsWrite, &Resource::Secret("tenant-a/pw")));
        assert!(p.allows(&a, Op::Password, &Resource::None));
        assert!(!p.allows(&a, Op::TokenAdmin, &Resource::Token("app-a")));
        assert!(p.allows_any_on_key(&a, "tenant-a/db"));
        assert!(!p.allows_any_on_key(&a, "tenant-b/db"));
        let nobody = vec!["token:other".to_owned(), "anonymous".to_owned()];
        for op in Op::ALL {
            for r in [
                Resource::Key("tenant-a/db"),
                Resource::Secret("s"),
                Resource::Name("dns:x"),
                Resource::Token("t"),
                Resource::None,
            ] {
                assert!(!p.allows(&nobody, op, &r));
            }
        }
        let root = vec!["unix:uid=1000".to_owned(), "unix:gid=0".to_owned()];
        assert!(p.allows(&root, Op::TokenAdmin, &Resource::Token("ci")));
        assert!(p.allows(&root, Op::PkiAdmin, &Resource::None));
        assert!(!p.allows(&root, Op::AuditRead, &Resource::None), "\"*\" does not include unnamed global operations");
        assert!(p.allows(&root, Op::PkiIssue, &Resource::Name("dns:anything")));
        let owner = Policy::owner_only(1000);
        assert!(owner.allows(&["unix:uid=1000".into()], Op::Admin, &Resource::Key("k")));
        assert!(!owner.allows(&["unix:uid=1001".into()], Op::Admin, &Resource::Key("k")));
    }

    #[test]
    fn star_covers_only_the_listed_kinds_of_resource() {
        let p = Policy::parse(
            "[roles.ka]\ngrants = [{ operations = [\"*\"], keys = [\"tenant-a/**\"] }]\n\
             [[bindings]]\nprincipals = [\"token:ka\"]\nroles = [\"ka\"]\n",
        )
        .unwrap();
        let ka = vec!["token:ka".to_owned()];
        assert!(p.allows(&ka, Op::Admin, &Resource::Key("tenant-a/x")));
        for (op, r) in [
            (Op::TokenAdmin, Resource::Token("ops")),
            (Op::PkiAdmin, Resource::None),
            (Op::AuditRead, Resource::None),
            (Op::Password, Resource::None),
            (Op::PkiIssue, Resource::Name("uri:spiffe://x/ops")),
            (Op::SecretsRead, Resource::Secret("tenant-a/x")),
        ] {
            assert!(!p.allows(&ka, op, &r), "{op:?}");
        }
        assert!(!p.allows_op_somewhere(&ka, Op::TokenAdmin));
    }

    #[test]
    fn bad_policies_are_refused_with_a_reason() {
        for (text, needle) in [
            ("[roles.x]\ngrants = [{ operations = [\"encrypt\"] }]", "needs `keys`"),
            ("[roles.x]\ngrants = [{ operations = [\"fly\"], keys = [\"*\"] }]", "unknown operation"),
            ("[roles.x]\ngrants = []", "no grants"),
            ("[[bindings]]\nprincipals = [\"a\"]\nroles = [\"missing\"]", "unknown role"),
            ("[roles.x]\ngrants = [{ operations = [\"encrypt\"], keys = [\"*\"], colour = 1 }]", "colour"),
            ("roles = 5", "roles"),
            ("[[bindings]]\nprincipals = []\nroles = []", "required"),
        ] {
            let e = Policy::parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
        assert!(Policy::parse("").unwrap().bindings.is_empty(), "an empty policy denies everything");
    }
}
