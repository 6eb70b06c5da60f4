//! Manifest parsing: image manifests and indexes in their OCI and Docker
//! schema 2 forms, including OCI 1.1 artifacts and subjects.
//!
//! The raw bytes stay with the caller; this module only extracts the facts the
//! registry needs (media type, references, subject, artifact type).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::media_type::{self, essence};

/// Why manifest bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON of a known shape: {0}")]
    Malformed(String),
    #[error("Docker schema 1 manifests are not supported; push with schema 2 or OCI (e.g. `docker push` of a current engine, `skopeo copy --format v2s2`)")]
    Schema1,
    #[error("unsupported manifest media type {0:?}")]
    UnknownMediaType(String),
    #[error("Content-Type {header:?} does not match the manifest's mediaType {body:?}")]
    MediaTypeMismatch { header: String, body: String },
    #[error("schemaVersion must be 2, got {0}")]
    SchemaVersion(i64),
    #[error("an image manifest needs a \"config\" descriptor and a \"layers\" array")]
    MissingImageFields,
    #[error("an index needs a \"manifests\" array")]
    MissingIndexFields,
    #[error("descriptor size must not be negative")]
    NegativeSize,
    #[error("{field} {value:?} is not a media type (RFC 6838: printable ASCII)")]
    MediaTypeInvalid { field: &'static str, value: String },
}

/// Whether a manifest describes one image/artifact or a list of manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    Image,
    Index,
}

/// A content descriptor as it appears in manifests and in the referrers index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

impl Descriptor {
    /// Whether the blob may live elsewhere (foreign or non-distributable
    /// layers), so the registry must not insist on having it.
    pub fn is_foreign(&self) -> bool {
        // Only the foreign media types may live elsewhere; `urls` on an
        // ordinary layer does not excuse the registry from holding it.
        self.media_type == media_type::DOCKER_FOREIGN_LAYER
            || media_type::OCI_NONDISTRIBUTABLE_LAYERS.contains(&self.media_type.as_str())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
    // Present only in Docker schema 1.
    fs_layers: Option<serde_json::Value>,
}

/// The facts of a parsed manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub media_type: String,
    pub kind: ManifestKind,
    pub artifact_type: Option<String>,
    pub config: Option<Descriptor>,
    pub layers: Vec<Descriptor>,
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    pub annotations: Option<BTreeMap<String, String>>,
}

fn kind_of(media_type: &str) -> Result<ManifestKind, ManifestError> {
    match media_type {
        media_type::OCI_MANIFEST | media_type::DOCKER_MANIFEST => Ok(ManifestKind::Image),
        media_type::OCI_INDEX | media_type::DOCKER_MANIFEST_LIST => Ok(ManifestKind::Index),
        media_type::DOCKER_SCHEMA1 | media_type::DOCKER_SCHEMA1_SIGNED => Err(ManifestError::Schema1),
        other => Err(ManifestError::UnknownMediaType(other.to_owned())),
    }
}

impl Manifest {
    /// Parses manifest bytes pushed with the given `Content-Type` header.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Manifest, ManifestError> {
        let raw: RawManifest = serde_json::from_slice(bytes).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        let header = content_type.map(essence).filter(|h| !h.is_empty());
        if raw.schema_version == Some(1)
            || raw.fs_layers.is_some()
            || header
                .as_deref()
                .is_some_and(|h| kind_of(h) == Err(ManifestError::Schema1))
        {
            return Err(ManifestError::Schema1);
        }
        match raw.schema_version {
            Some(2) => {}
            Some(v) => return Err(ManifestError::SchemaVersion(v)),
            None => return Err(ManifestError::Malformed("missing schemaVersion".into())),
        }
        let media_type = match (&header, &raw.media_type) {
            (Some(h), Some(b)) if h != b => {
                return Err(ManifestError::MediaTypeMismatch {
                    header: h.clone(),
                    body: b.clone(),
                })
            }
            (_, Some(b)) => b.clone(),
            (Some(h), None) => h.clone(),
            // OCI allows mediaType to be absent; the shape then decides.
            (None, None) if raw.manifests.is_some() => media_type::OCI_INDEX.to_owned(),
            (None, None) => media_type::OCI_MANIFEST.to_owned(),
        };
        let kind = kind_of(&media_type)?;
        let manifest = match kind {
            ManifestKind::Image => {
                let (Some(config), Some(layers)) = (raw.config, raw.layers) else {
                    return Err(ManifestError::MissingImageFields);
                };
                Manifest {
                    media_type,
                    kind,
                    artifact_type: raw.artifact_type,
                    config: Some(config),
                    layers,
                    manifests: Vec::new(),
                    subject: raw.subject,
                    annotations: raw.annotations,
                }
            }
            ManifestKind::Index => {
                let Some(manifests) = raw.manifests else {
                    return Err(ManifestError::MissingIndexFields);
                };
                Manifest {
                    media_type,
                    kind,
                    artifact_type: raw.artifact_type,
                    config: None,
                    layers: Vec::new(),
                    manifests,
                    subject: raw.subject,
                    annotations: raw.annotations,
                }
            }
        };
        if manifest.descriptors().any(|d| d.size < 0) {
            return Err(ManifestError::NegativeSize);
        }
        // The registry records these as text (a referrer's artifact type
        // comes from one of them), and answers filters with them.
        let media_types = std::iter::once(("artifactType", manifest.artifact_type.as_ref()))
            .chain(manifest.descriptors().flat_map(|d| {
                [
                    ("descriptor mediaType", Some(&d.media_type)),
                    ("descriptor artifactType", d.artifact_type.as_ref()),
                ]
            }))
            .filter_map(|(field, value)| value.map(|v| (field, v)));
        for (field, value) in media_types {
            if !media_type::is_plausible(value) {
                return Err(ManifestError::MediaTypeInvalid {
                    field,
                    value: value.clone(),
                });
            }
        }
        Ok(manifest)
    }

    fn descriptors(&self) -> impl Iterator<Item = &Descriptor> {
        self.config
            .iter()
            .chain(&self.layers)
            .chain(&self.manifests)
            .chain(&self.subject)
    }

    /// Blobs this manifest needs the repository to have (config and layers,
    /// except layers that are declared to live elsewhere).
    pub fn required_blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config.iter().chain(self.layers.iter().filter(|d| !d.is_foreign()))
    }

    /// The artifact type shown for this manifest in a referrers list:
    /// `artifactType`, else the config media type of an image manifest.
    pub fn referrer_artifact_type(&self) -> Option<String> {
        self.artifact_type
            .clone()
            .or_else(|| self.config.as_ref().map(|c| c.media_type.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn image(media_type: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{media_type}","config":{{"mediaType":"c","digest":"{D}","size":0}},"layers":[{{"mediaType":"l","digest":"{D}","size":0}}]}}"#
        )
    }

    #[test]
    fn parses_an_oci_image_manifest() {
        let m = Manifest::parse(
            image(media_type::OCI_MANIFEST).as_bytes(),
            Some(media_type::OCI_MANIFEST),
        )
        .unwrap();
        assert_eq!(m.kind, ManifestKind::Image);
        assert_eq!(m.required_blobs().count(), 2);
        assert_eq!(m.referrer_artifact_type().as_deref(), Some("c"));
    }

    #[test]
    fn content_type_must_agree_with_media_type() {
        let err = Manifest::parse(
            image(media_type::OCI_MANIFEST).as_bytes(),
            Some(media_type::DOCKER_MANIFEST),
        );
        assert!(matches!(err, Err(ManifestError::MediaTypeMismatch { .. })));
        // Parameters on the header are ignored.
        let ok = Manifest::parse(
            image(media_type::DOCKER_MANIFEST).as_bytes(),
            Some("application/vnd.docker.distribution.manifest.v2+json; charset=utf-8"),
        );
        assert!(ok.is_ok());
    }

    #[test]
    fn only_foreign_media_types_may_live_elsewhere() {
        let with_urls =
            image(media_type::OCI_MANIFEST).replace(r#""mediaType":"l","#, r#""mediaType":"l","urls":["http://x"],"#);
        let m = Manifest::parse(with_urls.as_bytes(), None).unwrap();
        assert_eq!(m.required_blobs().count(), 2);
        let foreign = image(media_type::DOCKER_MANIFEST).replace(
            r#""mediaType":"l""#,
            &format!(r#""mediaType":"{}""#, media_type::DOCKER_FOREIGN_LAYER),
        );
        let m = Manifest::parse(foreign.as_bytes(), None).unwrap();
        assert_eq!(m.required_blobs().count(), 1);
    }

    #[test]
    fn schema1_is_refused() {
        let s1 = br#"{"schemaVersion":1,"name":"a","tag":"b","fsLayers":[]}"#;
        assert_eq!(Manifest::parse(s1, None), Err(ManifestError::Schema1));
        assert_eq!(
            Manifest::parse(
                image(media_type::OCI_MANIFEST).as_bytes(),
                Some(media_type::DOCKER_SCHEMA1_SIGNED)
            ),
            Err(ManifestError::Schema1)
        );
    }

    #[test]
    fn index_without_media_type_is_inferred() {
        let idx = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{D}","size":3}}]}}"#,
            media_type::OCI_MANIFEST
        );
        let m = Manifest::parse(idx.as_bytes(), None).unwrap();
        assert_eq!(m.kind, ManifestKind::Index);
        assert_eq!(m.manifests.len(), 1);
    }

    #[test]
    fn bad_shapes_are_refused() {
        assert!(matches!(
            Manifest::parse(b"not json", None),
            Err(ManifestError::Malformed(_))
        ));
        assert!(matches!(
            Manifest::parse(
                br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#,
                None
            ),
            Err(ManifestError::MissingImageFields)
        ));
        assert!(matches!(
            Manifest::parse(br#"{"schemaVersion":2,"mediaType":"text/plain","config":{}}"#, None),
            Err(ManifestError::Malformed(_)) | Err(ManifestError::UnknownMediaType(_))
        ));
        let bad_digest = image(media_type::OCI_MANIFEST).replace(D, "sha256:1234");
        assert!(matches!(
            Manifest::parse(bad_digest.as_bytes(), None),
            Err(ManifestError::Malformed(_))
        ));
    }

    #[test]
    fn media_types_are_printable_ascii() {
        let with = |from: &str, to: &str| image(media_type::OCI_MANIFEST).replacen(from, to, 1);
        for (manifest, field) in [
            (
                with(r#""mediaType":"c""#, r#""mediaType":"c\u0000""#),
                "descriptor mediaType",
            ),
            (
                with(r#""mediaType":"l""#, r#""mediaType":"l\n""#),
                "descriptor mediaType",
            ),
            (
                with(r#""config""#, r#""artifactType":"application/x\u0000","config""#),
                "artifactType",
            ),
            (
                with(r#""config""#, r#""artifactType":"application/\u00e9","config""#),
                "artifactType",
            ),
            (
                with(r#""mediaType":"c","#, r#""mediaType":"c","artifactType":"\u0000","#),
                "descriptor artifactType",
            ),
        ] {
            match Manifest::parse(manifest.as_bytes(), None) {
                Err(ManifestError::MediaTypeInvalid { field: f, .. }) => assert_eq!(f, field, "{manifest}"),
                other => panic!("{manifest}: {other:?}"),
            }
        }
        let fine = with(r#""config""#, r#""artifactType":"text/plain; charset=utf-8","config""#);
        assert!(Manifest::parse(fine.as_bytes(), None).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(bytes: Vec<u8>, ct in proptest::option::of("\\PC*")) {
            let _ = Manifest::parse(&bytes, ct.as_deref());
        }
    }
}
