//! The archive's format: an OCI image layout (image-spec `image-layout.md`)
//! in a tar, whose `index.json` also says which repository each image
//! belongs to and how it arrived there. Pure: no I/O.
//!
//! ```text
//! oci-layout                 {"imageLayoutVersion":"1.0.0"}
//! index.json                 an image index: one descriptor per tag, and per
//!                            untagged manifest that goes along (referrers)
//! blobs/<alg>/<hex>          every manifest first, then configs and layers
//! ```
//!
//! Each descriptor of `index.json` carries annotations: the tag as
//! `org.opencontainers.image.ref.name` (image-spec: the reference of the
//! image in the layout), the repository as `io.berth.repository`, and
//! `io.berth.provenance` / `io.berth.upstream` when known. Children of an
//! index are not listed: they are reached through the index.

use std::collections::BTreeMap;
use std::str::FromStr;

use berth_oci::{media_type, Descriptor, Digest, RepoName, Tag};
use serde::{Deserialize, Serialize};

use crate::registry::Provenance;

/// The name of the layout's marker file.
pub const LAYOUT_FILE: &str = "oci-layout";
/// The name of the layout's entry point.
pub const INDEX_FILE: &str = "index.json";
/// image-spec: the layout version this writer follows.
const LAYOUT_VERSION: &str = "1.0.0";

/// image-spec: the reference (here: the tag) of an image in a layout.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The repository an image of the archive belongs to.
pub const REPOSITORY: &str = "io.berth.repository";
/// How the image arrived in the registry it was exported from.
pub const PROVENANCE: &str = "io.berth.provenance";
/// The upstream registry a mirrored image came from, when known.
pub const UPSTREAM: &str = "io.berth.upstream";

#[derive(Serialize, Deserialize)]
struct LayoutMarker {
    #[serde(rename = "imageLayoutVersion")]
    image_layout_version: String,
}

/// The bytes of the `oci-layout` file.
pub fn layout_file() -> Vec<u8> {
    let marker = LayoutMarker {
        image_layout_version: LAYOUT_VERSION.into(),
    };
    serde_json::to_vec(&marker).unwrap_or_default()
}

/// Checks an `oci-layout` file: a 1.x layout.
pub fn check_layout_file(bytes: &[u8]) -> Result<(), String> {
    let marker: LayoutMarker =
        serde_json::from_slice(bytes).map_err(|e| format!("{LAYOUT_FILE} is not an image layout marker: {e}"))?;
    if marker.image_layout_version.split('.').next() != Some("1") {
        return Err(format!(
            "{LAYOUT_FILE} declares image layout version {:?}; this berth reads 1.x",
            marker.image_layout_version
        ));
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImageIndex {
    schema_version: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    manifests: Vec<Descriptor>,
}

/// An image of the archive as `index.json` names it: a tag of a
/// repository, or an untagged manifest that goes along with the tagged ones.
#[derive(Debug, Clone, PartialEq)]
pub struct Root {
    pub repository: RepoName,
    pub tag: Option<Tag>,
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub provenance: Option<Provenance>,
    pub upstream: Option<String>,
}

impl Root {
    /// How the image shows in the registry: `repo:tag` or `repo@digest`.
    pub fn name(&self) -> String {
        match &self.tag {
            Some(tag) => format!("{}:{tag}", self.repository),
            None => format!("{}@{}", self.repository, self.digest),
        }
    }

    fn descriptor(&self) -> Descriptor {
        let mut annotations = BTreeMap::new();
        annotations.insert(REPOSITORY.to_string(), self.repository.to_string());
        if let Some(tag) = &self.tag {
            annotations.insert(REF_NAME.to_string(), tag.to_string());
        }
        if let Some(provenance) = self.provenance {
            annotations.insert(PROVENANCE.to_string(), provenance.as_str().to_string());
        }
        if let Some(upstream) = &self.upstream {
            annotations.insert(UPSTREAM.to_string(), upstream.clone());
        }
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: i64::try_from(self.size).unwrap_or(i64::MAX),
            artifact_type: None,
            annotations: Some(annotations),
            urls: None,
            platform: None,
        }
    }

    fn from_descriptor(d: Descriptor) -> Result<Root, String> {
        let at = format!("the descriptor of {} in {INDEX_FILE}", d.digest);
        let annotations = d.annotations.unwrap_or_default();
        let repository = annotations
            .get(REPOSITORY)
            .ok_or_else(|| format!("{at} names no repository (annotation {REPOSITORY}), which berth import needs"))?;
        let repository = RepoName::from_str(repository).map_err(|e| format!("{at}: repository {repository:?}: {e}"))?;
        let tag = annotations
            .get(REF_NAME)
            .map(|t| Tag::from_str(t).map_err(|e| format!("{at}: tag {t:?}: {e}")))
            .transpose()?;
        let provenance = annotations
            .get(PROVENANCE)
            .map(|p| Provenance::from_str(p).map_err(|e| format!("{at}: {e}")))
            .transpose()?;
        if !media_type::MANIFEST_TYPES.contains(&d.media_type.as_str()) {
            return Err(format!("{at}: media type {:?} is not a manifest's", d.media_type));
        }
        Ok(Root {
            repository,
            tag,
            digest: d.digest,
            media_type: d.media_type,
            size: u64::try_from(d.size).map_err(|_| format!("{at}: negative size"))?,
            provenance,
            upstream: annotations.get(UPSTREAM).cloned(),
        })
    }
}

/// The bytes of `index.json` for these images, in their order.
pub fn index_file(roots: &[Root]) -> Vec<u8> {
    let index = ImageIndex {
        schema_version: 2,
        media_type: Some(media_type::OCI_INDEX.into()),
        manifests: roots.iter().map(Root::descriptor).collect(),
    };
    serde_json::to_vec_pretty(&index).unwrap_or_default()
}

/// The images `index.json` names, in its order.
pub fn parse_index_file(bytes: &[u8]) -> Result<Vec<Root>, String> {
    let index: ImageIndex =
        serde_json::from_slice(bytes).map_err(|e| format!("{INDEX_FILE} is not an image index: {e}"))?;
    if index.schema_version != 2 {
        return Err(format!(
            "{INDEX_FILE} has schemaVersion {}, not 2",
            index.schema_version
        ));
    }
    index.manifests.into_iter().map(Root::from_descriptor).collect()
}

/// The path of a blob in the layout: `blobs/<alg>/<hex>`.
pub fn blob_path(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm().as_str(), digest.hex())
}

/// What an archive entry's path names.
#[derive(Debug, Clone, PartialEq)]
pub enum EntryName {
    Layout,
    Index,
    Blob(Digest),
    /// Anything else (which an importer may pass over).
    Other,
}

impl EntryName {
    /// The name of the entry at `path` (with or without a leading `./`);
    /// an error for a path under `blobs/` that does not name a blob.
    pub fn of(path: &str) -> Result<EntryName, String> {
        let path = path.trim_start_matches("./");
        match path {
            LAYOUT_FILE => return Ok(EntryName::Layout),
            INDEX_FILE => return Ok(EntryName::Index),
            _ => {}
        }
        let Some(rest) = path.strip_prefix("blobs/") else {
            return Ok(EntryName::Other);
        };
        let (algorithm, hex) = rest
            .split_once('/')
            .ok_or_else(|| format!("{path} is not a blob path (blobs/<alg>/<hex>)"))?;
        Digest::from_str(&format!("{algorithm}:{hex}"))
            .map(EntryName::Blob)
            .map_err(|e| format!("{path} does not name a blob: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(tag: Option<&str>) -> Root {
        Root {
            repository: "team/app".parse().unwrap(),
            tag: tag.map(|t| t.parse().unwrap()),
            digest: Digest::sha256_of(b"manifest"),
            media_type: media_type::DOCKER_MANIFEST.into(),
            size: 8,
            provenance: Some(Provenance::Mirrored),
            upstream: None,
        }
    }

    #[test]
    fn an_index_file_reads_back_as_written() {
        let mut mirrored = root(Some("v1"));
        mirrored.upstream = Some("registry.example".into());
        let roots = vec![mirrored, root(None)];
        let bytes = index_file(&roots);
        assert_eq!(parse_index_file(&bytes).unwrap(), roots);
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let annotations = &json["manifests"][0]["annotations"];
        assert_eq!(annotations[REF_NAME], "v1");
        assert_eq!(annotations[REPOSITORY], "team/app");
        assert_eq!(annotations[PROVENANCE], "mirrored");
        assert_eq!(annotations[UPSTREAM], "registry.example");
        assert_eq!(json["manifests"][1]["annotations"].get(REF_NAME), None);
        assert_eq!(
            json["manifests"][1]["annotations"].get(UPSTREAM),
            None,
            "no upstream, no annotation"
        );
    }

    #[test]
    fn an_index_file_without_a_repository_or_with_bad_names_is_refused() {
        let mut no_repo: serde_json::Value = serde_json::from_slice(&index_file(&[root(Some("v1"))])).unwrap();
        no_repo["manifests"][0]["annotations"]
            .as_object_mut()
            .unwrap()
            .remove(REPOSITORY);
        let err = parse_index_file(&serde_json::to_vec(&no_repo).unwrap()).unwrap_err();
        assert!(err.contains(REPOSITORY), "{err}");
        for (key, value) in [(REPOSITORY, "Team/App"), (REF_NAME, "bad tag"), (PROVENANCE, "stolen")] {
            let mut bad: serde_json::Value = serde_json::from_slice(&index_file(&[root(Some("v1"))])).unwrap();
            bad["manifests"][0]["annotations"][key] = value.into();
            let err = parse_index_file(&serde_json::to_vec(&bad).unwrap()).unwrap_err();
            assert!(err.contains(value), "{key}: {err}");
        }
        let mut layer = root(None);
        layer.media_type = "application/vnd.oci.image.layer.v1.tar".into();
        assert!(parse_index_file(&index_file(&[layer])).is_err());
        assert!(parse_index_file(b"[]").is_err());
    }

    #[test]
    fn entry_paths_name_the_layout_files_and_blobs() {
        let digest = Digest::sha256_of(b"x");
        assert_eq!(EntryName::of(&blob_path(&digest)), Ok(EntryName::Blob(digest.clone())));
        assert_eq!(
            EntryName::of(&format!("./{}", blob_path(&digest))),
            Ok(EntryName::Blob(digest))
        );
        assert_eq!(EntryName::of("oci-layout"), Ok(EntryName::Layout));
        assert_eq!(EntryName::of("./index.json"), Ok(EntryName::Index));
        assert_eq!(EntryName::of("manifest.json"), Ok(EntryName::Other));
        assert!(EntryName::of("blobs/sha256/abc").is_err());
        assert!(EntryName::of("blobs/sha256").is_err());
        assert!(EntryName::of("blobs/md5/00").is_err());
    }

    #[test]
    fn the_layout_marker_is_version_one() {
        assert_eq!(check_layout_file(&layout_file()), Ok(()));
        assert!(check_layout_file(br#"{"imageLayoutVersion":"2.0.0"}"#).is_err());
        assert!(check_layout_file(b"not json").is_err());
    }
}
