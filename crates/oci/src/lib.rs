//! The OCI distribution and image specs as pure Rust.
//!
//! This crate owns the grammar of names, tags and digests, manifest parsing,
//! the closed set of error codes and the `/v2/` path grammar. It does no I/O
//! and knows nothing of HTTP servers or storage, so parsers can be property
//! tested and fuzzed on their own.

pub mod digest;
pub mod endpoint;
pub mod error;
pub mod manifest;
pub mod media_type;
pub mod name;

pub use digest::{Algorithm, Digest, DigestError, DigestHasher};
pub use endpoint::{Endpoint, EndpointError, UploadId};
pub use error::ErrorCode;
pub use manifest::{Descriptor, Manifest, ManifestError, ManifestKind};
pub use name::{NameError, Reference, RepoName, Tag, MAX_NAME_LEN, MAX_TAG_LEN};
