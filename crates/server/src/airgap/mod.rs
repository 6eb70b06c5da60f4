//! `berth export` and `berth import`: the content of repositories carried
//! across an air gap as one archive, an OCI image layout in a tar (see
//! [`layout`] for the format).
//!
//! Both stream in one pass with constant memory, whatever the archive's
//! size: manifests are kept in memory, blob bytes flow through bounded
//! channels between the registry's stores and a thread that runs the sync
//! `tar` reader or writer. The archive puts `oci-layout` and `index.json`
//! first, then every manifest (an index before its children), then configs
//! and layers, so that an importer knows every manifest, and so which
//! repositories each blob goes to, before the first layer arrives.
//!
//! Every read and write goes through the registry core, which verifies each
//! blob's digest as it streams in and each manifest's references as it is
//! stored; nothing here touches a store directly. This module must not grow
//! rules of its own about what a registry may hold.

mod export;
mod import;
mod layout;
mod tar_io;

use std::path::PathBuf;

use berth_oci::{Reference, RepoName};
use serde::Serialize;

use crate::registry::RegistryError;

pub use export::{export, Selection};
pub use import::import;

/// Why an export or an import failed.
#[derive(Debug, thiserror::Error)]
pub enum AirgapError {
    /// The archive is not one that `berth export` writes.
    #[error("the archive is not a berth export: {0}")]
    Format(String),
    /// Bytes in the archive are not what their name or their manifest says.
    #[error("the archive is damaged: {entry}: {problem}")]
    Damaged { entry: String, problem: String },
    /// Something the archive's manifests need is not in it.
    #[error("the archive is incomplete (truncated, or not all of an export): {0}")]
    Incomplete(String),
    #[error("cannot read the archive: {0}")]
    Read(String),
    #[error("cannot write the archive: {0}")]
    Write(String),
    /// The registry refused or failed an operation on `what`.
    #[error("{what}: {error}")]
    Registry { what: String, error: RegistryError },
    /// The registry's content disagrees with itself (it changed during the
    /// export, or it is damaged: `berth fsck` tells).
    #[error("{0}")]
    Inconsistent(String),
}

impl AirgapError {
    /// A registry error about `what` (an image, a blob).
    fn registry(what: impl std::fmt::Display) -> impl FnOnce(RegistryError) -> AirgapError {
        let what = what.to_string();
        move |error| AirgapError::Registry { what, error }
    }
}

pub type Result<T, E = AirgapError> = std::result::Result<T, E>;

/// An image as people write it: `repo:tag` or `repo@digest`.
fn image(repo: &RepoName, reference: &Reference) -> String {
    match reference {
        Reference::Tag(tag) => format!("{repo}:{tag}"),
        Reference::Digest(digest) => format!("{repo}@{digest}"),
    }
}

/// Where an archive is read from or written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchivePath {
    /// Standard input or output (`-` on the command line).
    Stdio,
    File(PathBuf),
}

impl ArchivePath {
    /// The archive a command-line argument names: `-` is standard input or output.
    pub fn from_arg(arg: PathBuf) -> ArchivePath {
        if arg.as_os_str() == "-" {
            ArchivePath::Stdio
        } else {
            ArchivePath::File(arg)
        }
    }
}

impl std::fmt::Display for ArchivePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArchivePath::Stdio => f.write_str("-"),
            ArchivePath::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// What an export wrote.
#[derive(Debug, Default, Serialize)]
pub struct ExportSummary {
    pub repositories: u64,
    pub tags: u64,
    /// Manifests written (each once, however many repositories hold it).
    pub manifests: u64,
    /// Configs and layers written (each once).
    pub blobs: u64,
    /// Bytes of manifests and blobs written.
    pub bytes: u64,
    pub elapsed_ms: u64,
}

/// What an import found and did.
#[derive(Debug, Default, Serialize)]
pub struct ImportSummary {
    pub repositories: u64,
    /// Tags moved to their archived manifest.
    pub tags_set: u64,
    /// Tags that named their archived manifest already.
    pub tags_unchanged: u64,
    /// Manifests stored in a repository (one that several repositories hold
    /// counts once for each).
    pub manifests_stored: u64,
    /// Manifests a repository held already.
    pub manifests_unchanged: u64,
    /// Blobs whose bytes were stored.
    pub blobs_stored: u64,
    /// Blobs the registry held already (their bytes in the archive were
    /// verified and not written again).
    pub blobs_present: u64,
    /// Blobs linked into a repository other than the one they were stored through.
    pub blobs_linked: u64,
    /// Bytes of the archive read.
    pub bytes: u64,
    pub elapsed_ms: u64,
}
