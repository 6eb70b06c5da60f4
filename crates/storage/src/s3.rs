//! The S3 blob store: the filesystem store's layout as object keys in a
//! bucket (`<prefix>/blobs/<alg>/<2 hex>/<hex>`), for replicas that share
//! nothing but the bucket and the database.
//!
//! An upload session lives entirely in the bucket, under
//! `<prefix>/uploads/<id>/`: an empty `started` object made by
//! [`BlobStore::start_upload`], and one *segment* object per append, named by
//! the offset it starts at (20 zero-padded digits, so names sort by offset).
//! The session's bytes are the chain of segments that continue each other
//! from offset 0; anything else under the session (a segment left by an
//! append that failed half-way through discarding what it replaced) is off
//! the chain, ignored, and deleted by the next append. Nothing about a
//! session stays in process memory between calls, so any replica can take
//! the next request.
//!
//! A blob key only ever receives complete bytes: from a server-side copy of
//! a single segment, or from one PUT or one multipart upload that is
//! completed only after every byte went through. A blob pushed in one request
//! is *staged* at its own key, and that upload is completed only when the
//! caller publishes it. This module must not decide whether bytes match a
//! digest: the caller has verified them.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use berth_oci::{Digest, UploadId};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{
    ClientConfigKey, GetOptions, GetRange, GetResult, MultipartUpload, ObjectMeta, ObjectStore, PutPayload,
    PutPayloadMut,
};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::{BlobStore, ByteStream, StagedBlob, StorageError, StoredFile};

/// Size of the parts of a multipart upload while the total is unknown (an
/// append). With [`PARTS_IN_FLIGHT`] this bounds what one transfer holds in
/// memory to about 24 MiB; S3's limit of 10,000 parts then caps one append
/// (one PATCH request) at about 78 GiB.
const PART_SIZE: usize = 8 << 20;
/// Parts uploaded at the same time by one transfer.
const PARTS_IN_FLIGHT: usize = 2;
/// Objects up to this size go up in one PUT: it is what a multipart transfer
/// holds in memory anyway, and one request instead of three (create, part,
/// complete) saves round trips, and the service's joining of the parts.
const SINGLE_PUT_MAX: usize = PART_SIZE * (PARTS_IN_FLIGHT + 1);
/// S3 accepts at most this many parts in one multipart upload.
const MAX_PARTS: u64 = 10_000;
/// The largest object S3 copies in one request; larger segments are streamed.
const MAX_COPY: u64 = 5 << 30;
/// SigV4 presigned URLs are valid for at most 7 days.
const MAX_PRESIGN_SECS: u64 = 7 * 24 * 60 * 60;
/// Name of the object that says an upload session exists.
const SESSION_MARKER: &str = "started";
/// Request time limit of the client for transfers of blob bytes. object_store's
/// default of 30 s counts the whole response body, so it would cut every blob
/// download that takes a client longer than that, and a large server-side
/// copy; this limit only guards against a connection that never completes.
const BULK_TIMEOUT: &str = "24h";

fn default_presign_expiry_secs() -> u64 {
    1200
}

/// Where and how to reach the bucket of an S3 blob store ([`S3BlobStore`]).
///
/// What is left out here is taken from the process environment the way the
/// AWS tools do (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, `AWS_REGION`, web identity, an instance profile);
/// what is set here wins over the environment.
// Serialize only so that the server's configuration can carry it through its
// layered loader; it is never printed (see the Debug impl).
#[derive(Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The service URL (`https://minio.example:9000`); absent means AWS S3.
    #[serde(default)]
    #[schemars(example = &"https://minio.example:9000")]
    pub endpoint: Option<String>,
    /// The bucket's region; absent means `AWS_REGION`, else us-east-1.
    #[serde(default)]
    #[schemars(example = &"us-east-1")]
    pub region: Option<String>,
    /// The bucket; it must exist.
    #[schemars(example = &"berth")]
    pub bucket: String,
    /// Key prefix of everything this store writes (`berth/prod`), so that
    /// installations can share a bucket.
    #[serde(default)]
    #[schemars(example = &"berth/prod")]
    pub prefix: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`) rather than virtual-host
    /// (`bucket.endpoint/key`). Absent means path-style with an `endpoint`
    /// (what MinIO and Ceph expect) and virtual-host on AWS.
    #[serde(default)]
    pub path_style: Option<bool>,
    /// Static credentials: the key id and the secret go together.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// The secret key of `access_key_id`.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Only with static credentials that are temporary.
    #[serde(default)]
    pub session_token: Option<String>,
    /// Permits an `http://` endpoint, over which requests travel unencrypted.
    #[serde(default)]
    pub allow_http: bool,
    /// How long a presigned download URL stays valid, in seconds (at most
    /// 7 days; with temporary credentials, no longer than they last).
    #[serde(default = "default_presign_expiry_secs")]
    pub presign_expiry_secs: u64,
}

/// Shows whether credentials are set, never their values.
impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn presence(value: &Option<String>) -> &'static str {
            if value.is_some() {
                "<set>"
            } else {
                "<unset>"
            }
        }
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("path_style", &self.path_style)
            .field("access_key_id", &presence(&self.access_key_id))
            .field("secret_access_key", &presence(&self.secret_access_key))
            .field("session_token", &presence(&self.session_token))
            .field("allow_http", &self.allow_http)
            .field("presign_expiry_secs", &self.presign_expiry_secs)
            .finish()
    }
}

/// A blob store in an S3 bucket (AWS, MinIO, Ceph RGW or any S3-compatible service).
#[derive(Clone)]
pub struct S3BlobStore {
    /// For requests whose duration does not grow with a blob: HEAD, LIST,
    /// DELETE, session markers (object_store's default time limits).
    quick: AmazonS3,
    /// For requests that carry blob bytes: streamed GETs, uploads, copies.
    bulk: AmazonS3,
    root: Path,
    /// "bucket B at ENDPOINT", for error messages.
    place: Arc<str>,
    presign_expiry: Duration,
}

impl fmt::Debug for S3BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3BlobStore")
            .field("place", &self.place)
            .field("root", &self.root.as_ref())
            .finish_non_exhaustive()
    }
}

impl S3BlobStore {
    /// Connects to the bucket and checks that the store can write there, so
    /// that a wrong bucket, endpoint or credential stops the start and not
    /// the first push.
    pub async fn open(config: &S3Config) -> Result<Self, StorageError> {
        let store = Self::connect(config)?;
        let probe = store.root.child(".write-probe");
        // A listing is refused for a missing bucket, where some services
        // (s3s-fs) would create it on the first PUT.
        if let Some(Err(e)) = store.quick.list(Some(&probe)).next().await {
            return Err(store.fail("checking access by listing", &probe, e));
        }
        store
            .quick
            .put(&probe, PutPayload::from_static(b"berth"))
            .await
            .map_err(|e| store.fail("writing the probe object", &probe, e))?;
        store
            .quick
            .delete(&probe)
            .await
            .map_err(|e| store.fail("deleting the probe object", &probe, e))?;
        Ok(store)
    }

    /// Builds the clients from `config` without contacting the service.
    fn connect(config: &S3Config) -> Result<Self, StorageError> {
        let bad = |why: String| StorageError::Config(format!("S3 bucket {:?}: {why}", config.bucket));
        if config.bucket.is_empty() {
            return Err(StorageError::Config("S3 bucket name is empty".into()));
        }
        let plain_http = match config.endpoint.as_deref() {
            None => false,
            Some(e) if e.starts_with("https://") => false,
            Some(e) if e.starts_with("http://") => {
                if !config.allow_http {
                    return Err(bad(format!(
                        "endpoint {e} is plain HTTP; set allow_http = true to permit it"
                    )));
                }
                true
            }
            Some(e) => return Err(bad(format!("endpoint {e:?} must start with https:// or http://"))),
        };
        if config.access_key_id.is_some() != config.secret_access_key.is_some() {
            return Err(bad(
                "access_key_id and secret_access_key must be set together (or both left to the environment)".into(),
            ));
        }
        if config.session_token.is_some() && config.access_key_id.is_none() {
            return Err(bad("session_token needs access_key_id and secret_access_key".into()));
        }
        if !(1..=MAX_PRESIGN_SECS).contains(&config.presign_expiry_secs) {
            return Err(bad(format!(
                "presign_expiry_secs must be between 1 and {MAX_PRESIGN_SECS}, not {}",
                config.presign_expiry_secs
            )));
        }
        let prefix = config.prefix.as_deref().unwrap_or("").trim_matches('/');
        let root = Path::parse(prefix).map_err(|e| bad(format!("prefix {prefix:?} is not a valid key prefix: {e}")))?;
        let path_style = config.path_style.unwrap_or(config.endpoint.is_some());
        note_ca_bundle();

        let client = |bulk: bool| -> Result<AmazonS3, StorageError> {
            let mut builder = AmazonS3Builder::from_env()
                .with_bucket_name(&config.bucket)
                .with_allow_http(config.allow_http)
                .with_virtual_hosted_style_request(!path_style)
                // Over TLS the body is already protected in transit; a signed
                // body would make object_store hash every uploaded byte once
                // more, on top of the digest the registry computes.
                .with_unsigned_payload(!plain_http);
            if bulk {
                builder = builder.with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), BULK_TIMEOUT);
            }
            if let Some(endpoint) = &config.endpoint {
                builder = builder.with_endpoint(bucket_endpoint(endpoint, &config.bucket, path_style));
            }
            if let Some(region) = &config.region {
                builder = builder.with_region(region);
            }
            if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
                builder = builder.with_access_key_id(id).with_secret_access_key(secret);
            }
            if let Some(token) = &config.session_token {
                builder = builder.with_token(token);
            }
            builder
                .build()
                .map_err(|e| bad(format!("cannot set up the S3 client: {e}")))
        };
        let endpoint = match &config.endpoint {
            Some(e) => e.clone(),
            None => format!(
                "AWS S3 ({})",
                config.region.as_deref().unwrap_or("region from the environment")
            ),
        };
        Ok(S3BlobStore {
            quick: client(false)?,
            bulk: client(true)?,
            root,
            place: format!("bucket {} at {endpoint}", config.bucket).into(),
            presign_expiry: Duration::from_secs(config.presign_expiry_secs),
        })
    }

    fn blob_path(&self, digest: &Digest) -> Path {
        let hex = digest.hex();
        self.root
            .child("blobs")
            .child(digest.algorithm().as_str())
            .child(&hex[..2])
            .child(hex)
    }

    fn session_path(&self, id: &UploadId) -> Path {
        self.root.child("uploads").child(id.as_str())
    }

    fn segment_path(&self, id: &UploadId, offset: u64) -> Path {
        self.session_path(id).child(segment_name(offset))
    }

    /// An object store failure, as an operator needs to read it.
    fn fail(&self, what: &str, path: &Path, e: object_store::Error) -> StorageError {
        StorageError::Backend(format!("{what} {path} in {}: {e}", self.place))
    }

    async fn size_of(&self, path: &Path) -> Result<Option<u64>, StorageError> {
        match self.quick.head(path).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail("reading the metadata of", path, e)),
        }
    }

    async fn list(&self, prefix: &Path) -> Result<Vec<ObjectMeta>, StorageError> {
        self.quick
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| self.fail("listing", prefix, e))
    }

    /// Deletes `paths`; `context` names them in an error.
    async fn delete_all(&self, paths: Vec<Path>, context: &Path) -> Result<(), StorageError> {
        if paths.is_empty() {
            return Ok(());
        }
        let mut results = self
            .quick
            .delete_stream(futures::stream::iter(paths.into_iter().map(Ok)).boxed());
        while let Some(result) = results.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.fail("deleting objects under", context, e)),
            }
        }
        Ok(())
    }

    /// What the bucket holds of session `id`.
    async fn session(&self, id: &UploadId) -> Result<Session, StorageError> {
        let prefix = self.session_path(id);
        let listed = self.list(&prefix).await?;
        Ok(Session::from_objects(
            listed
                .into_iter()
                .map(|meta| SessionObject::new(&prefix, meta))
                .collect(),
        ))
    }

    /// [`Self::session`], for a session that must have been started.
    async fn started_session(&self, id: &UploadId) -> Result<Session, StorageError> {
        let session = self.session(id).await?;
        if session.started {
            Ok(session)
        } else {
            Err(StorageError::UploadNotFound)
        }
    }

    /// Makes the session hold exactly its first `offset` bytes: the segments
    /// from `offset` on and everything off the chain go, and a segment across
    /// `offset` is rewritten to its part before it.
    async fn cut(&self, id: &UploadId, session: &Session, offset: u64) -> Result<(), StorageError> {
        let mut doomed = session.strays.clone();
        for segment in &session.chain {
            if segment.start >= offset {
                doomed.push(segment.path.clone());
            } else if segment.end() > offset {
                // The new object replaces the old one only once it is whole,
                // after the old one has been read: a failure leaves the long
                // segment, which the next append at this offset cuts again.
                let keep = offset - segment.start;
                let bytes = self.read_segments(vec![(segment.path.clone(), keep)]);
                self.write_stream(&segment.path, bytes, keep, PART_SIZE).await?;
            }
        }
        self.delete_all(doomed, &self.session_path(id)).await
    }

    /// The bytes of `plan`'s segments in order, the given length of each.
    /// They are fetched in pieces of a part's size, [`PARTS_IN_FLIGHT`]
    /// pieces at a time, so that a session made of many segments is read
    /// back over several connections (one GET at a time left the commit of
    /// a chunked push waiting on the service), with memory bounded by the
    /// pieces in flight.
    fn read_segments(&self, plan: Vec<(Path, u64)>) -> ByteStream {
        let store = self.bulk.clone();
        let place = self.place.clone();
        let stream = futures::stream::iter(pieces(plan, PART_SIZE as u64))
            .map(move |(path, range)| {
                let store = store.clone();
                let place = place.clone();
                async move {
                    let options = GetOptions {
                        range: Some(GetRange::Bounded(range)),
                        ..GetOptions::default()
                    };
                    let fetched = match store.get_opts(&path, options).await {
                        Ok(result) => result.bytes().await,
                        Err(e) => Err(e),
                    };
                    fetched.map_err(|e| read_error(&place, &path, e))
                }
            })
            .buffered(PARTS_IN_FLIGHT);
        Box::pin(stream)
    }

    /// Writes `bytes`, which must be `len` long, as the object `path`; a
    /// shorter stream leaves `path` untouched.
    async fn write_stream(
        &self,
        path: &Path,
        bytes: ByteStream,
        len: u64,
        part_size: usize,
    ) -> Result<(), StorageError> {
        let (writer, written) = self
            .receive(path.clone(), bytes, part_size, StorageError::Io, "writing")
            .await?;
        if written != len {
            writer.abort().await;
            return Err(StorageError::UploadTooShort {
                expected: len,
                actual: written,
            });
        }
        writer.finish().await.map_err(|e| self.fail("writing", path, e))
    }

    /// Streams `data` into a writer of the object `path`, not finished yet;
    /// returns it with the number of bytes received. On an error nothing of
    /// it stays: a failure of `data` is reported through `source_error`, one
    /// of the store as `what` (`uploading`) the object.
    async fn receive(
        &self,
        path: Path,
        mut data: ByteStream,
        part_size: usize,
        source_error: fn(io::Error) -> StorageError,
        what: &str,
    ) -> Result<(ObjectWriter, u64), StorageError> {
        let mut writer = ObjectWriter::new(self.bulk.clone(), path.clone(), part_size);
        let mut received = 0u64;
        while let Some(chunk) = data.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    writer.abort().await;
                    return Err(source_error(e));
                }
            };
            received += chunk.len() as u64;
            if let Err(e) = writer.write(chunk).await {
                writer.abort().await;
                return Err(self.fail(what, &path, e));
            }
        }
        Ok((writer, received))
    }

    /// Removes the objects of session `id` once its blob is in place. A
    /// failure is only logged: leftovers of a session take space, and the
    /// garbage collector removes upload objects that have no session.
    async fn clear_session(&self, id: &UploadId, objects: Vec<Path>) {
        if let Err(e) = self.delete_all(objects, &self.session_path(id)).await {
            tracing::warn!(upload = %id, error = %e, "blob stored, but its upload objects could not be removed");
        }
    }

    /// Copies a segment into place inside the service.
    async fn copy_into_place(&self, from: &Path, to: &Path, len: u64) -> Result<(), StorageError> {
        self.bulk
            .copy(from, to)
            .await
            .map_err(|e| self.fail(&format!("copying {from} to"), to, e))?;
        // S3 may answer a CopyObject with 200 and put the failure in the
        // body, which object_store does not read for copies: check the result.
        match self.size_of(to).await? {
            Some(size) if size == len => Ok(()),
            found => Err(StorageError::Backend(format!(
                "copying {from} to {to} in {} reported success, but the copy holds {} instead of {len} bytes",
                self.place,
                found.map_or_else(|| "nothing".to_string(), |s| s.to_string()),
            ))),
        }
    }
}

/// The endpoint object_store needs: it takes a virtual-host endpoint with
/// the bucket already in the host name.
fn bucket_endpoint(endpoint: &str, bucket: &str, path_style: bool) -> String {
    match endpoint.split_once("://") {
        Some((scheme, rest)) if !path_style => format!("{scheme}://{bucket}.{rest}"),
        _ => endpoint.to_string(),
    }
}

/// object_store takes its settings from `AWS_*` variables by name
/// (`AmazonS3Builder::from_env`, which skips names it does not know), and
/// `AWS_CA_BUNDLE` is not one of them: setting it neither breaks the client
/// (the reference registry fails to start with it) nor has any effect. TLS
/// trusts the system roots through rustls-native-certs, which reads
/// `SSL_CERT_FILE` and `SSL_CERT_DIR`; a private CA belongs there. An
/// operator who set `AWS_CA_BUNDLE` to something else likely expects it to
/// apply, so say that it does not.
fn note_ca_bundle() {
    if let Some(bundle) = std::env::var_os("AWS_CA_BUNDLE") {
        if std::env::var_os("SSL_CERT_FILE").as_ref() != Some(&bundle) {
            tracing::warn!(
                aws_ca_bundle = ?bundle,
                "AWS_CA_BUNDLE is not used by the S3 client, which trusts the system roots and SSL_CERT_FILE / SSL_CERT_DIR"
            );
        }
    }
}

fn segment_name(offset: u64) -> String {
    format!("{offset:020}")
}

fn segment_offset(name: &str) -> Option<u64> {
    if name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()) {
        name.parse().ok()
    } else {
        None
    }
}

/// Part size for an object of `len` bytes: [`PART_SIZE`], or more when that
/// would take more than S3's [`MAX_PARTS`].
fn part_size_for(len: u64) -> usize {
    const MIB: u64 = 1 << 20;
    let needed = len.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
    usize::try_from(needed).map_or(usize::MAX, |n| n.max(PART_SIZE))
}

/// `plan` as byte ranges of its segments, none longer than `piece`, in order.
fn pieces(plan: Vec<(Path, u64)>, piece: u64) -> Vec<(Path, Range<u64>)> {
    let mut pieces = Vec::new();
    for (path, len) in plan {
        let mut start = 0;
        while start < len {
            let end = len.min(start + piece);
            pieces.push((path.clone(), start..end));
            start = end;
        }
    }
    pieces
}

/// How much of each segment of `chain` makes up its first `len` bytes.
fn plan(chain: &[Segment], len: u64) -> Vec<(Path, u64)> {
    let mut left = len;
    let mut plan = Vec::new();
    for segment in chain {
        if left == 0 {
            break;
        }
        let take = segment.size.min(left);
        plan.push((segment.path.clone(), take));
        left -= take;
    }
    plan
}

fn read_error(place: &str, path: &Path, e: object_store::Error) -> io::Error {
    let kind = match e {
        object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, format!("reading {path} in {place}: {e}"))
}

fn body_stream(result: GetResult, place: Arc<str>, path: Path) -> ByteStream {
    Box::pin(result.into_stream().map_err(move |e| read_error(&place, &path, e)))
}

fn modified_ms(meta: &ObjectMeta) -> i64 {
    meta.last_modified.timestamp_millis()
}

/// One object under an upload session, as a listing shows it.
#[derive(Debug, Clone)]
struct SessionObject {
    /// The name within the session; empty for anything deeper down.
    name: String,
    path: Path,
    size: u64,
    modified_ms: i64,
}

impl SessionObject {
    fn new(session: &Path, meta: ObjectMeta) -> Self {
        let name = meta
            .location
            .prefix_match(session)
            .map(|parts| parts.map(|p| p.as_ref().to_string()).collect::<Vec<_>>())
            .filter(|parts| parts.len() == 1)
            .and_then(|mut parts| parts.pop())
            .unwrap_or_default();
        SessionObject {
            name,
            size: meta.size,
            modified_ms: modified_ms(&meta),
            path: meta.location,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Segment {
    start: u64,
    size: u64,
    path: Path,
}

impl Segment {
    fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// What the bucket holds of one upload session.
#[derive(Debug, Default)]
struct Session {
    /// The session marker exists.
    started: bool,
    /// Segments that continue each other from offset 0, in order.
    chain: Vec<Segment>,
    /// The session's objects that are neither the marker nor on the chain.
    strays: Vec<Path>,
    /// Every object of the session.
    objects: Vec<Path>,
    /// The newest modification of any object, Unix milliseconds.
    modified_ms: i64,
}

impl Session {
    fn from_objects(objects: Vec<SessionObject>) -> Session {
        let mut session = Session::default();
        let mut segments = Vec::new();
        for object in objects {
            session.modified_ms = session.modified_ms.max(object.modified_ms);
            session.objects.push(object.path.clone());
            if object.name == SESSION_MARKER {
                session.started = true;
                continue;
            }
            match segment_offset(&object.name) {
                Some(start) if object.size > 0 => segments.push(Segment {
                    start,
                    size: object.size,
                    path: object.path,
                }),
                _ => session.strays.push(object.path),
            }
        }
        segments.sort_by_key(|s| s.start);
        let mut end = 0;
        for segment in segments {
            if segment.start == end {
                end = segment.end();
                session.chain.push(segment);
            } else {
                session.strays.push(segment.path);
            }
        }
        session
    }

    /// The session's length: where its chain of segments ends.
    fn len(&self) -> u64 {
        self.chain.last().map_or(0, Segment::end)
    }
}

/// A blob written to its own key by [`S3BlobStore::stage_blob`], waiting
/// for its digest to be checked. Dropped unpublished, its writer aborts the
/// multipart upload, so the key never shows the bytes.
struct StagedObject<'a> {
    store: &'a S3BlobStore,
    id: &'a UploadId,
    writer: ObjectWriter,
    len: u64,
}

#[async_trait]
impl StagedBlob for StagedObject<'_> {
    fn len(&self) -> u64 {
        self.len
    }

    async fn publish(self: Box<Self>) -> Result<(), StorageError> {
        let StagedObject { store, id, writer, len } = *self;
        let path = writer.path.clone();
        // A blob the bucket holds whole already is left alone, as a commit
        // leaves it: rewriting it would only cost the service the work, and
        // not every S3 server replaces an object atomically for its readers.
        if store.size_of(&path).await? == Some(len) {
            writer.abort().await;
        } else {
            writer
                .finish()
                .await
                .map_err(|e| store.fail("completing the upload of", &path, e))?;
        }
        match store.session(id).await {
            Ok(session) => store.clear_session(id, session.objects).await,
            Err(e) => {
                tracing::warn!(upload = %id, error = %e, "blob stored, but its upload objects could not be listed to remove them")
            }
        }
        Ok(())
    }
}

/// Writes one object from chunks with bounded memory: one PUT when it fits
/// in [`SINGLE_PUT_MAX`], else a multipart upload with [`PARTS_IN_FLIGHT`]
/// parts at a time. A multipart upload that does not complete is aborted,
/// also when the future driving the writer is dropped (a client that went
/// away): its parts would stay in the bucket, unseen but billed, until a
/// lifecycle rule went.
struct ObjectWriter {
    store: AmazonS3,
    path: Path,
    part_size: usize,
    /// Up to this many bytes wait in `buffer` for one PUT.
    single_put_max: usize,
    buffer: PutPayloadMut,
    multipart: Option<Multipart>,
}

struct Multipart {
    upload: Box<dyn MultipartUpload>,
    parts: JoinSet<object_store::Result<()>>,
}

impl Multipart {
    async fn complete(&mut self) -> object_store::Result<()> {
        while let Some(done) = self.parts.join_next().await {
            done??;
        }
        self.upload.complete().await?;
        Ok(())
    }

    async fn abort(mut self, path: &Path) {
        self.parts.shutdown().await;
        if let Err(e) = self.upload.abort().await {
            tracing::warn!(key = %path, error = %e, "could not abort a multipart upload; its parts stay until a bucket lifecycle rule removes them");
        }
    }
}

impl ObjectWriter {
    fn new(store: AmazonS3, path: Path, part_size: usize) -> Self {
        ObjectWriter {
            store,
            path,
            part_size,
            single_put_max: SINGLE_PUT_MAX.max(part_size),
            buffer: PutPayloadMut::new(),
            multipart: None,
        }
    }

    async fn write(&mut self, bytes: Bytes) -> object_store::Result<()> {
        if self.multipart.is_none() {
            if self.buffer.content_length() + bytes.len() <= self.single_put_max {
                self.buffer.push(bytes);
                return Ok(());
            }
            // Too large for one PUT: what waits goes up as the first parts.
            let held = std::mem::take(&mut self.buffer).freeze();
            for chunk in held {
                self.add_to_parts(chunk).await?;
            }
        }
        self.add_to_parts(bytes).await
    }

    async fn add_to_parts(&mut self, mut bytes: Bytes) -> object_store::Result<()> {
        while !bytes.is_empty() {
            let room = self.part_size - self.buffer.content_length();
            if bytes.len() < room {
                self.buffer.push(bytes);
                break;
            }
            // Parts of exactly one size: some services (R2) require it.
            self.buffer.push(bytes.split_to(room));
            self.send_part().await?;
        }
        Ok(())
    }

    async fn send_part(&mut self) -> object_store::Result<()> {
        let part = std::mem::take(&mut self.buffer).freeze();
        let multipart = match self.multipart.take() {
            Some(multipart) => multipart,
            None => Multipart {
                upload: self.store.put_multipart(&self.path).await?,
                parts: JoinSet::new(),
            },
        };
        let multipart = self.multipart.insert(multipart);
        while multipart.parts.len() >= PARTS_IN_FLIGHT {
            if let Some(done) = multipart.parts.join_next().await {
                done??;
            }
        }
        multipart.parts.spawn(multipart.upload.put_part(part));
        Ok(())
    }

    /// Makes the object visible with everything written.
    async fn finish(mut self) -> object_store::Result<()> {
        let rest = std::mem::take(&mut self.buffer).freeze();
        let Some(multipart) = self.multipart.as_mut() else {
            self.store.put(&self.path, rest).await?;
            return Ok(());
        };
        if rest.content_length() > 0 {
            multipart.parts.spawn(multipart.upload.put_part(rest));
        }
        // Kept in `self` while completing, so that a drop aborts it.
        let completed = multipart.complete().await;
        let multipart = self.multipart.take();
        if let (Err(_), Some(multipart)) = (&completed, multipart) {
            multipart.abort(&self.path).await;
        }
        completed
    }

    /// Drops what was written; the object is left as it was.
    async fn abort(mut self) {
        if let Some(multipart) = self.multipart.take() {
            multipart.abort(&self.path).await;
        }
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        let Some(mut multipart) = self.multipart.take() else {
            return;
        };
        multipart.parts.abort_all();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let path = self.path.clone();
            runtime.spawn(async move { multipart.abort(&path).await });
        }
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, StorageError> {
        self.size_of(&self.blob_path(digest)).await
    }

    async fn get(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<ByteStream, StorageError> {
        let path = self.blob_path(digest);
        let empty = || -> ByteStream { Box::pin(futures::stream::empty()) };
        let options = match &range {
            None => GetOptions::default(),
            // An empty range is not a valid HTTP range.
            Some(r) if r.start >= r.end => {
                return match self.size_of(&path).await? {
                    Some(_) => Ok(empty()),
                    None => Err(StorageError::BlobNotFound),
                };
            }
            Some(r) => GetOptions {
                range: Some(GetRange::Bounded(r.clone())),
                ..GetOptions::default()
            },
        };
        match self.bulk.get_opts(&path, options).await {
            Ok(result) => Ok(body_stream(result, self.place.clone(), path)),
            Err(object_store::Error::NotFound { .. }) => Err(StorageError::BlobNotFound),
            Err(e) => {
                // S3 refuses (416) a range that starts at or past the end,
                // which this store's contract clips to nothing.
                if let Some(r) = &range {
                    match self.size_of(&path).await? {
                        None => return Err(StorageError::BlobNotFound),
                        Some(size) if r.start >= size => return Ok(empty()),
                        Some(_) => {}
                    }
                }
                Err(self.fail("reading", &path, e))
            }
        }
    }

    async fn delete(&self, digest: &Digest) -> Result<(), StorageError> {
        let path = self.blob_path(digest);
        match self.quick.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail("deleting", &path, e)),
        }
    }

    async fn delete_many(&self, digests: &[Digest]) -> Result<(), StorageError> {
        // Bulk deletes: one request per thousand keys instead of one per blob.
        let paths = digests.iter().map(|d| self.blob_path(d)).collect();
        self.delete_all(paths, &self.root.child("blobs")).await
    }

    async fn start_upload(&self, id: &UploadId) -> Result<(), StorageError> {
        let marker = self.session_path(id).child(SESSION_MARKER);
        self.quick
            .put(&marker, PutPayload::new())
            .await
            .map_err(|e| self.fail("creating the upload marker", &marker, e))?;
        Ok(())
    }

    async fn append_upload(&self, id: &UploadId, offset: u64, data: ByteStream) -> Result<u64, StorageError> {
        let session = self.started_session(id).await?;
        let have = session.len();
        if have < offset {
            return Err(StorageError::UploadTooShort {
                expected: offset,
                actual: have,
            });
        }
        // Discarding first, as the filesystem store truncates first: an
        // append that fails leaves the session at exactly `offset`.
        self.cut(id, &session, offset).await?;
        let path = self.segment_path(id, offset);
        let (writer, received) = self
            .receive(path.clone(), data, PART_SIZE, StorageError::Body, "uploading")
            .await?;
        if received == 0 {
            // An empty segment would add nothing to the chain.
            writer.abort().await;
            return Ok(offset);
        }
        writer.finish().await.map_err(|e| self.fail("uploading", &path, e))?;
        Ok(offset + received)
    }

    async fn read_upload(&self, id: &UploadId, len: u64) -> Result<ByteStream, StorageError> {
        let session = self.started_session(id).await?;
        let have = session.len();
        if have < len {
            return Err(StorageError::UploadTooShort {
                expected: len,
                actual: have,
            });
        }
        Ok(self.read_segments(plan(&session.chain, len)))
    }

    async fn commit_upload(&self, id: &UploadId, len: u64, digest: &Digest) -> Result<(), StorageError> {
        let session = self.started_session(id).await?;
        let have = session.len();
        if have < len {
            return Err(StorageError::UploadTooShort {
                expected: len,
                actual: have,
            });
        }
        let blob = self.blob_path(digest);
        if self.size_of(&blob).await?.is_none() {
            match session.chain.first() {
                Some(segment) if segment.size == len && len <= MAX_COPY => {
                    self.copy_into_place(&segment.path, &blob, len).await?;
                }
                _ => {
                    let bytes = self.read_segments(plan(&session.chain, len));
                    self.write_stream(&blob, bytes, len, part_size_for(len)).await?;
                }
            }
        }
        self.clear_session(id, session.objects).await;
        Ok(())
    }

    /// Writes the blob's own key as a multipart upload that is completed only
    /// on publishing, so the bytes are written once instead of once into the
    /// session and again by the commit's copy. A blob of up to
    /// [`SINGLE_PUT_MAX`] bytes waits in memory instead, and is put on
    /// publishing.
    async fn stage_blob<'a>(
        &'a self,
        id: &'a UploadId,
        digest: &'a Digest,
        data: ByteStream,
    ) -> Result<Box<dyn StagedBlob + 'a>, StorageError> {
        let (writer, len) = self
            .receive(self.blob_path(digest), data, PART_SIZE, StorageError::Body, "uploading")
            .await?;
        Ok(Box::new(StagedObject {
            store: self,
            id,
            writer,
            len,
        }))
    }

    async fn cancel_upload(&self, id: &UploadId) -> Result<(), StorageError> {
        let session = self.session(id).await?;
        self.delete_all(session.objects, &self.session_path(id)).await
    }

    async fn list_blobs(&self, algorithm: &str, shard: &str) -> Result<Vec<StoredFile<Digest>>, StorageError> {
        let dir = self.root.child("blobs").child(algorithm).child(shard);
        let listed = self.list(&dir).await?;
        Ok(listed
            .into_iter()
            .filter_map(|meta| {
                let mut parts = meta.location.prefix_match(&dir)?;
                let name = parts.next()?;
                if parts.next().is_some() {
                    return None;
                }
                // Only an object where its name puts it is a blob.
                let digest = Digest::from_str(&format!("{algorithm}:{}", name.as_ref()))
                    .ok()
                    .filter(|d| d.hex().starts_with(shard))?;
                Some(StoredFile {
                    key: digest,
                    size: meta.size,
                    modified_ms: modified_ms(&meta),
                })
            })
            .collect())
    }

    async fn list_uploads(&self) -> Result<Vec<StoredFile<UploadId>>, StorageError> {
        let dir = self.root.child("uploads");
        let mut sessions: BTreeMap<String, Vec<SessionObject>> = BTreeMap::new();
        for meta in self.list(&dir).await? {
            // Only objects inside a session's folder belong to a session.
            let Some(id) = meta.location.prefix_match(&dir).and_then(|mut parts| {
                let id = parts.next()?.as_ref().to_string();
                parts.next().map(|_| id)
            }) else {
                continue;
            };
            let session = dir.child(id.as_str());
            sessions.entry(id).or_default().push(SessionObject::new(&session, meta));
        }
        Ok(sessions
            .into_iter()
            .filter_map(|(id, objects)| {
                let key = UploadId::parse(&id)?;
                let session = Session::from_objects(objects);
                Some(StoredFile {
                    key,
                    size: session.len(),
                    modified_ms: session.modified_ms,
                })
            })
            .collect())
    }

    async fn download_url(&self, digest: &Digest) -> Result<Option<String>, StorageError> {
        let path = self.blob_path(digest);
        let url = self
            .quick
            .signed_url(http::Method::GET, &path, self.presign_expiry)
            .await
            .map_err(|e| self.fail("presigning a download of", &path, e))?;
        Ok(Some(url.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store on the S3 service named by `BERTH_TEST_S3_*`, under a key
    /// prefix of its own; `None` (after saying why) when no service is named.
    async fn test_store(test: &str) -> Option<S3BlobStore> {
        let config = test_config(test)?;
        Some(S3BlobStore::open(&config).await.expect("open the test bucket"))
    }

    fn env(name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }

    fn test_config(test: &str) -> Option<S3Config> {
        let Some(endpoint) = env("BERTH_TEST_S3_ENDPOINT") else {
            assert!(
                env("BERTH_TEST_REQUIRE_SERVICES").as_deref() != Some("1"),
                "{test}: BERTH_TEST_REQUIRE_SERVICES=1 but BERTH_TEST_S3_ENDPOINT is not set; \
                 start an S3 server first (s3_start in scripts/lib/s3.sh)"
            );
            eprintln!(
                "skipped S3 test {test}: set BERTH_TEST_S3_ENDPOINT (with BERTH_TEST_S3_BUCKET, BERTH_TEST_S3_ACCESS_KEY, \
                 BERTH_TEST_S3_SECRET_KEY, BERTH_TEST_S3_REGION) to run it against an S3 server"
            );
            return None;
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos();
        Some(S3Config {
            allow_http: endpoint.starts_with("http://"),
            endpoint: Some(endpoint),
            region: Some(env("BERTH_TEST_S3_REGION").unwrap_or_else(|| "us-east-1".into())),
            bucket: env("BERTH_TEST_S3_BUCKET").expect("BERTH_TEST_S3_BUCKET names the bucket"),
            // Unique per run and test, so runs and tests never see each other's
            // objects. Short, because s3s-fs names a file after the base64 of
            // bucket and key for each multipart upload: with a key longer than
            // about 125 bytes the name exceeds 255 bytes and the upload fails.
            prefix: Some(format!("b{}-{nanos:x}/{test}", std::process::id())),
            path_style: Some(true),
            access_key_id: env("BERTH_TEST_S3_ACCESS_KEY"),
            secret_access_key: env("BERTH_TEST_S3_SECRET_KEY"),
            session_token: None,
            presign_expiry_secs: 300,
        })
    }

    async fn keys_under(store: &S3BlobStore, dir: &Path) -> Vec<String> {
        let mut keys: Vec<String> = store
            .list(dir)
            .await
            .expect("list")
            .into_iter()
            .map(|m| m.location.to_string())
            .collect();
        keys.sort();
        keys
    }

    async fn all(bytes: ByteStream) -> Vec<u8> {
        let chunks: Vec<Bytes> = bytes.try_collect().await.expect("read");
        chunks.concat()
    }

    /// Leaves the bucket as the test found it.
    async fn remove_everything(store: &S3BlobStore) {
        let all = store.list(&store.root).await.expect("list the test prefix");
        let paths = all.into_iter().map(|m| m.location).collect();
        store.delete_all(paths, &store.root).await.expect("clean up");
    }

    #[tokio::test]
    async fn conformance() {
        let Some(store) = test_store("conformance").await else {
            return;
        };
        crate::conformance::run_all(&store).await;
        // Every commit and cancel of the suite removed its session's objects.
        assert_eq!(
            keys_under(&store, &store.root.child("uploads")).await,
            Vec::<String>::new()
        );
        remove_everything(&store).await;
    }

    #[tokio::test]
    async fn committed_blobs_are_laid_out_by_digest() {
        let Some(store) = test_store("layout").await else {
            return;
        };
        let digest = crate::conformance::put(&store, b"hello").await;
        let key = Path::parse(format!(
            "{}/blobs/sha256/{}/{}",
            store.root,
            &digest.hex()[..2],
            digest.hex()
        ))
        .unwrap();
        let bytes = store
            .quick
            .get(&key)
            .await
            .expect("the blob's key")
            .bytes()
            .await
            .expect("bytes");
        assert_eq!(&bytes[..], b"hello");
        assert_eq!(
            keys_under(&store, &store.root.child("uploads")).await,
            Vec::<String>::new()
        );
        remove_everything(&store).await;
    }

    #[tokio::test]
    async fn a_presigned_url_serves_the_blob() {
        let Some(store) = test_store("presigned").await else {
            return;
        };
        let data = b"fetched without credentials";
        let digest = crate::conformance::put(&store, data).await;
        let url = store.download_url(&digest).await.unwrap().expect("S3 hands out URLs");
        let response = reqwest::get(&url).await.expect("GET the presigned URL");
        assert_eq!(response.status(), reqwest::StatusCode::OK, "{url}");
        assert_eq!(&response.bytes().await.expect("body")[..], data);

        let missing = Digest::sha256_of(b"not in the bucket");
        let url = store.download_url(&missing).await.unwrap().expect("a URL all the same");
        let response = reqwest::get(&url).await.expect("GET the presigned URL");
        assert_eq!(response.status(), reqwest::StatusCode::NOT_FOUND);

        // Without its signature the same URL is refused.
        let url = store.download_url(&digest).await.unwrap().expect("a URL");
        let unsigned = url.split('?').next().expect("a URL has a path");
        let response = reqwest::get(unsigned).await.expect("GET the bare URL");
        assert!(response.status().is_client_error(), "{}", response.status());
        remove_everything(&store).await;
    }

    /// Puts `existing` at the key of the blob `bytes`, then stages and
    /// publishes `bytes` through the session `id`.
    async fn publish_over(store: &S3BlobStore, existing: &'static [u8], bytes: &'static [u8], id: &str) {
        let digest = Digest::sha256_of(bytes);
        store
            .bulk
            .put(&store.blob_path(&digest), PutPayload::from_static(existing))
            .await
            .unwrap();
        let id = UploadId::new(id.to_string());
        store.start_upload(&id).await.unwrap();
        let data: ByteStream = Box::pin(futures::stream::iter(vec![Ok(Bytes::from_static(bytes))]));
        store
            .stage_blob(&id, &digest, data)
            .await
            .unwrap()
            .publish()
            .await
            .unwrap();
        assert_eq!(keys_under(store, &store.session_path(&id)).await, Vec::<String>::new());
    }

    #[tokio::test]
    async fn publishing_leaves_a_whole_blob_object_alone() {
        let Some(store) = test_store("publishing_leaves_a_whole_blob_object_alone").await else {
            return;
        };
        let bytes = b"the bytes of the blob";
        let digest = Digest::sha256_of(bytes);
        // Bytes of the right length at the blob's key: publishing must not
        // rewrite what the bucket holds whole, as a commit does not.
        let held = b"what the bucket holds";
        assert_eq!(held.len(), bytes.len());
        publish_over(&store, held, bytes, "publish-over").await;
        assert_eq!(all(store.get(&digest, None).await.unwrap()).await, held);
        // A shorter object there is not the blob: publishing replaces it.
        publish_over(&store, b"short", bytes, "publish-over-short").await;
        assert_eq!(all(store.get(&digest, None).await.unwrap()).await, bytes);
        remove_everything(&store).await;
    }

    #[tokio::test]
    async fn objects_off_the_chain_are_ignored_and_removed() {
        let Some(store) = test_store("strays").await else {
            return;
        };
        let id = UploadId::new("strays".into());
        store.start_upload(&id).await.unwrap();
        let chunk = |b: &'static [u8]| -> ByteStream { Box::pin(futures::stream::iter([Ok(Bytes::from_static(b))])) };
        assert_eq!(store.append_upload(&id, 0, chunk(b"abc")).await.unwrap(), 3);
        // Left behind as by appends that failed half-way: one overlapping
        // the chain, one beyond a gap, one with a name that is no offset.
        for (name, body) in [(segment_name(1), "x"), (segment_name(7), "y"), ("junk".into(), "z")] {
            let path = store.session_path(&id).child(name.as_str());
            store
                .quick
                .put(&path, PutPayload::from_static(body.as_bytes()))
                .await
                .unwrap();
        }
        let listed = store.list_uploads().await.unwrap();
        assert_eq!(listed.iter().find(|f| f.key == id).map(|f| f.size), Some(3));
        assert_eq!(all(store.read_upload(&id, 3).await.unwrap()).await, b"abc");

        assert_eq!(store.append_upload(&id, 3, chunk(b"def")).await.unwrap(), 6);
        let session = store.session_path(&id);
        assert_eq!(
            keys_under(&store, &session).await,
            vec![
                store.segment_path(&id, 0).to_string(),
                store.segment_path(&id, 3).to_string(),
                session.child(SESSION_MARKER).to_string(),
            ]
        );
        let digest = Digest::sha256_of(b"abcdef");
        store.commit_upload(&id, 6, &digest).await.unwrap();
        assert_eq!(all(store.get(&digest, None).await.unwrap()).await, b"abcdef");
        assert!(keys_under(&store, &session).await.is_empty());
        remove_everything(&store).await;
    }

    #[tokio::test]
    async fn a_missing_bucket_stops_the_start_with_a_clear_message() {
        let Some(mut config) = test_config("missing_bucket") else {
            return;
        };
        config.bucket = "berth-no-such-bucket".into();
        let secret = config.secret_access_key.clone().unwrap_or_default();
        let err = S3BlobStore::open(&config)
            .await
            .expect_err("no such bucket")
            .to_string();
        eprintln!("refused as expected: {err}");
        assert!(err.contains("bucket berth-no-such-bucket at http"), "{err}");
        assert!(secret.is_empty() || !err.contains(&secret), "{err}");
    }

    #[tokio::test]
    async fn wrong_credentials_stop_the_start_without_showing_them() {
        let Some(mut config) = test_config("wrong_credentials") else {
            return;
        };
        config.secret_access_key = Some("not-the-secret-7f3a9c".into());
        let err = S3BlobStore::open(&config).await.expect_err("refused").to_string();
        eprintln!("refused as expected: {err}");
        assert!(err.contains("probe"), "{err}");
        assert!(!err.contains("not-the-secret-7f3a9c"), "{err}");
    }

    fn offline_config() -> S3Config {
        S3Config {
            endpoint: Some("https://s3.example.com:9000".into()),
            region: Some("eu-west-1".into()),
            bucket: "registry".into(),
            prefix: Some("/berth/prod/".into()),
            path_style: None,
            access_key_id: Some("AKIDEXAMPLE".into()),
            secret_access_key: Some("wJalrXUtnFEMI-secret".into()),
            session_token: Some("FwoGZX-token".into()),
            allow_http: false,
            presign_expiry_secs: 1200,
        }
    }

    #[test]
    fn debug_output_never_shows_credentials() {
        let shown = format!("{:?}", offline_config());
        for secret in ["AKIDEXAMPLE", "wJalrXUtnFEMI-secret", "FwoGZX-token"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("registry") && shown.contains("<set>"), "{shown}");
        let store = S3BlobStore::connect(&offline_config()).unwrap();
        let shown = format!("{store:?}");
        assert!(
            !shown.contains("wJalrXUtnFEMI-secret") && shown.contains("bucket registry"),
            "{shown}"
        );
    }

    #[test]
    fn config_reads_with_defaults() {
        let config: S3Config = serde_json::from_str(r#"{"bucket": "b"}"#).unwrap();
        assert_eq!(config.bucket, "b");
        assert_eq!(config.presign_expiry_secs, 1200);
        assert!(config.endpoint.is_none() && config.path_style.is_none() && !config.allow_http);
    }

    #[tokio::test]
    async fn presigned_urls_are_made_offline_with_the_layout_and_expiry() {
        let store = S3BlobStore::connect(&offline_config()).unwrap();
        assert_eq!(store.root.as_ref(), "berth/prod");
        let digest = Digest::sha256_of(b"x");
        let url = store.download_url(&digest).await.unwrap().unwrap();
        let key = format!(
            "/registry/berth/prod/blobs/sha256/{}/{}?",
            &digest.hex()[..2],
            digest.hex()
        );
        assert!(url.starts_with(&format!("https://s3.example.com:9000{key}")), "{url}");
        assert!(url.contains("X-Amz-Expires=1200"), "{url}");
        assert!(!url.contains("wJalrXUtnFEMI-secret"), "{url}");

        let mut virtual_host = offline_config();
        virtual_host.path_style = Some(false);
        let store = S3BlobStore::connect(&virtual_host).unwrap();
        let url = store.download_url(&digest).await.unwrap().unwrap();
        assert!(
            url.starts_with("https://registry.s3.example.com:9000/berth/prod/blobs/"),
            "{url}"
        );
    }

    #[test]
    fn unworkable_configs_are_refused_before_any_request() {
        let refused = |change: fn(&mut S3Config)| {
            let mut config = offline_config();
            change(&mut config);
            match S3BlobStore::connect(&config) {
                Err(StorageError::Config(why)) => why,
                other => panic!("expected a configuration error, got {other:?}"),
            }
        };
        assert!(refused(|c| c.endpoint = Some("http://minio:9000".into())).contains("allow_http"));
        assert!(refused(|c| c.endpoint = Some("minio:9000".into())).contains("https://"));
        assert!(refused(|c| c.secret_access_key = None).contains("together"));
        assert!(refused(|c| c.presign_expiry_secs = 0).contains("presign_expiry_secs"));
        assert!(refused(|c| c.presign_expiry_secs = MAX_PRESIGN_SECS + 1).contains("presign_expiry_secs"));
        assert!(refused(|c| c.prefix = Some("a//b".into())).contains("prefix"));
        assert!(refused(|c| c.bucket = String::new()).contains("empty"));
        let mut plain = offline_config();
        plain.endpoint = Some("http://minio:9000".into());
        plain.allow_http = true;
        assert!(S3BlobStore::connect(&plain).is_ok());
    }

    #[test]
    fn aws_ca_bundle_is_not_an_object_store_setting() {
        // Why AWS_CA_BUNDLE in the environment neither breaks nor changes the
        // client (see note_ca_bundle); if object_store starts to read it, this says so.
        assert!("aws_ca_bundle".parse::<AmazonS3ConfigKey>().is_err());
        assert!("ca_bundle".parse::<ClientConfigKey>().is_err());
    }

    fn object(name: &str, size: u64, modified_ms: i64) -> SessionObject {
        SessionObject {
            name: name.into(),
            path: Path::from(format!("uploads/u/{name}")),
            size,
            modified_ms,
        }
    }

    #[test]
    fn a_session_is_the_chain_of_segments_from_offset_zero() {
        let session = Session::from_objects(vec![
            object(&segment_name(10), 5, 3),
            object(SESSION_MARKER, 0, 1),
            object(&segment_name(0), 10, 2),
            object(&segment_name(4), 2, 9),  // overlaps the first segment
            object(&segment_name(15), 0, 4), // empty: adds nothing
            object(&segment_name(20), 1, 5), // after a gap
            object("00000000000000000x15", 1, 5),
            object("", 1, 5), // deeper down
        ]);
        assert!(session.started);
        assert_eq!(session.len(), 15);
        let starts: Vec<u64> = session.chain.iter().map(|s| s.start).collect();
        assert_eq!(starts, vec![0, 10]);
        assert_eq!(session.strays.len(), 5);
        assert_eq!(session.objects.len(), 8);
        assert_eq!(session.modified_ms, 9);
        assert_eq!(
            plan(&session.chain, 12),
            vec![(session.chain[0].path.clone(), 10), (session.chain[1].path.clone(), 2)]
        );
        assert!(plan(&session.chain, 0).is_empty());

        let unstarted = Session::from_objects(vec![object(&segment_name(0), 3, 1)]);
        assert!(!unstarted.started);
        assert_eq!(unstarted.len(), 3);
    }

    #[test]
    fn segment_names_sort_by_offset() {
        assert_eq!(segment_name(42), "00000000000000000042");
        assert_eq!(segment_offset(&segment_name(u64::MAX)), Some(u64::MAX));
        assert!(segment_name(9) < segment_name(10));
        assert_eq!(segment_offset("42"), None);
    }

    #[test]
    fn parts_grow_only_past_ten_thousand() {
        assert_eq!(part_size_for(0), PART_SIZE);
        assert_eq!(part_size_for(10_000 * PART_SIZE as u64), PART_SIZE);
        let big = 200u64 << 30;
        let part = part_size_for(big) as u64;
        assert!(part > PART_SIZE as u64 && big.div_ceil(part) <= MAX_PARTS && part.is_multiple_of(1 << 20));
    }

    #[test]
    fn segments_are_read_in_pieces_that_cover_them_in_order() {
        let (a, b) = (Path::from("s/a"), Path::from("s/b"));
        let got = pieces(vec![(a.clone(), 25), (b.clone(), 10), (a.clone(), 0)], 10);
        let want = vec![(a.clone(), 0..10), (a.clone(), 10..20), (a, 20..25), (b, 0..10)];
        assert_eq!(got, want);
    }
}
