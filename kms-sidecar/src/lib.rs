//! # kms-sidecar
//!
//! The KMS sidecar's library. This release holds its persistence layer:
//!
//! * [`keystore`]: the [`keystore::KeyStore`] trait with an embedded SQLite backend (the
//!   default: one file in the data directory) and a PostgreSQL backend (many sidecars
//!   sharing keys), both passing one conformance suite (`tests/keystore.rs`). Key
//!   material is stored only wrapped by the root key.
//! * [`root_key`]: the local master key file that wraps every KEK version at rest.
//! * [`kms`]: the KMS operations (key lifecycle, encrypt/decrypt/re-encrypt, data keys,
//!   secrets) over a store and a root key, independent of transport.
//!
//! * [`client`]: a blocking client and [`client::SidecarProvider`], crypto-core's
//!   `KeyProvider` backed by the sidecar (used by `kmsctl`).
//! * [`grpc`], [`server`]: the `kms.v1` gRPC service (plus health and reflection) on a
//!   Unix socket; the `kms-sidecar` binary serves it.
//! * [`k8s_kms`]: the Kubernetes KMS v2 plugin API over one key, on its own socket.
//! * [`security`], [`policy`], [`audit`], [`metrics`]: who is calling, whether they may,
//!   their limits, the hash-chained audit log every request is recorded in (fail
//!   closed), and the Prometheus endpoint.

pub mod audit;
#[cfg(feature = "aws-kms")]
pub mod aws_root;
pub mod ca;
pub mod client;
pub mod config;
pub mod grpc;
pub mod k8s_kms;
pub mod keystore;
pub mod kms;
pub mod metrics;
pub mod policy;
pub mod root_key;
pub mod security;
pub mod server;
mod streaming;
pub mod tls_auto;
