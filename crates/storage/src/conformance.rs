//! The behaviour every [`BlobStore`] backend must show; each backend's tests
//! call [`run_all`] on a fresh store.

use berth_oci::{Digest, UploadId};
use bytes::Bytes;
use futures::StreamExt;

use crate::{BlobStore, ByteStream, StorageError};

fn stream_of(chunks: Vec<&[u8]>) -> ByteStream {
    let owned: Vec<std::io::Result<Bytes>> = chunks.into_iter().map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    Box::pin(futures::stream::iter(owned))
}

async fn collect(s: ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut s = s;
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.expect("stream chunk"));
    }
    out
}

fn new_id() -> UploadId {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    UploadId::new(format!(
        "conformance-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Stores `bytes` through an upload session and returns its digest.
pub async fn put(store: &dyn BlobStore, bytes: &[u8]) -> Digest {
    let id = new_id();
    let digest = Digest::sha256_of(bytes);
    store.start_upload(&id).await.expect("start upload");
    let len = store
        .append_upload(&id, 0, stream_of(vec![bytes]))
        .await
        .expect("append");
    store.commit_upload(&id, len, &digest).await.expect("commit");
    digest
}

async fn append(store: &dyn BlobStore, id: &UploadId, offset: u64, chunks: Vec<&[u8]>) -> u64 {
    store
        .append_upload(id, offset, stream_of(chunks))
        .await
        .expect("append")
}

async fn read(store: &dyn BlobStore, id: &UploadId, len: u64) -> Vec<u8> {
    collect(store.read_upload(id, len).await.expect("read upload")).await
}

/// Bytes that differ from one position to the next, so that parts stored
/// out of order or twice cannot go unnoticed.
fn patterned(len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
        .collect()
}

/// Runs every conformance check.
pub async fn run_all(store: &dyn BlobStore) {
    listings_show_blobs_and_sessions(store).await;
    round_trip_and_ranges(store).await;
    many_blobs_are_deleted_at_once(store).await;
    the_empty_blob_round_trips(store).await;
    chunked_uploads_resume_at_the_acknowledged_offset(store).await;
    an_append_replaces_what_lies_past_its_offset(store).await;
    many_appends_commit_into_one_blob(store).await;
    a_large_append_streams_through(store).await;
    staged_blobs_appear_only_when_published(store).await;
    missing_things_are_reported(store).await;
    committing_an_existing_blob_is_idempotent(store).await;
    cancel_drops_the_session(store).await;
    download_urls_are_absent_or_web_addresses(store).await;
}

async fn round_trip_and_ranges(store: &dyn BlobStore) {
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let digest = put(store, &data).await;
    assert_eq!(store.stat(&digest).await.unwrap(), Some(data.len() as u64));
    assert_eq!(collect(store.get(&digest, None).await.unwrap()).await, data);
    let part = collect(store.get(&digest, Some(1_000_000..2_500_001)).await.unwrap()).await;
    assert_eq!(part, &data[1_000_000..2_500_001]);
    // A range is clipped to the blob.
    let tail = collect(store.get(&digest, Some(2_999_990..4_000_000)).await.unwrap()).await;
    assert_eq!(tail, &data[2_999_990..]);
    for past_or_empty in [3_000_000..3_000_010, 4_000_000..4_000_001, 10..10] {
        let none = collect(store.get(&digest, Some(past_or_empty.clone())).await.unwrap()).await;
        assert!(none.is_empty(), "range {past_or_empty:?} of a 3,000,000-byte blob");
    }
    store.delete(&digest).await.unwrap();
    assert_eq!(store.stat(&digest).await.unwrap(), None);
    store.delete(&digest).await.unwrap();
}

async fn many_blobs_are_deleted_at_once(store: &dyn BlobStore) {
    let mut doomed = Vec::new();
    for i in 0..40u32 {
        doomed.push(put(store, format!("doomed blob {i}").as_bytes()).await);
    }
    let kept = put(store, b"a blob that stays").await;
    // A digest the store never held is skipped without error.
    doomed.push(Digest::sha256_of(b"never stored"));
    store.delete_many(&doomed).await.expect("delete many");
    for digest in &doomed {
        assert_eq!(store.stat(digest).await.unwrap(), None, "{digest} was deleted");
    }
    assert_eq!(store.stat(&kept).await.unwrap(), Some(17));
    // Again, now that none exists, and with nothing at all.
    store.delete_many(&doomed).await.expect("delete many again");
    store.delete_many(&[]).await.expect("delete nothing");
    store.delete(&kept).await.unwrap();
}

async fn chunked_uploads_resume_at_the_acknowledged_offset(store: &dyn BlobStore) {
    let id = new_id();
    store.start_upload(&id).await.unwrap();
    assert_eq!(
        store
            .append_upload(&id, 0, stream_of(vec![b"abc", b"def"]))
            .await
            .unwrap(),
        6
    );
    // An attempt that was not acknowledged left bytes behind; the next append at 6 drops them.
    let failing: ByteStream = Box::pin(futures::stream::iter(vec![
        Ok(Bytes::from_static(b"XYZ")),
        Err(std::io::Error::other("client went away")),
    ]));
    assert!(matches!(
        store.append_upload(&id, 6, failing).await,
        Err(StorageError::Body(_))
    ));
    assert_eq!(store.append_upload(&id, 6, stream_of(vec![b"ghi"])).await.unwrap(), 9);
    assert_eq!(collect(store.read_upload(&id, 9).await.unwrap()).await, b"abcdefghi");
    assert!(matches!(
        store.append_upload(&id, 20, stream_of(vec![b"x"])).await,
        Err(StorageError::UploadTooShort { .. })
    ));
    let digest = Digest::sha256_of(b"abcdefghi");
    store.commit_upload(&id, 9, &digest).await.unwrap();
    assert_eq!(collect(store.get(&digest, None).await.unwrap()).await, b"abcdefghi");
}

async fn the_empty_blob_round_trips(store: &dyn BlobStore) {
    let digest = put(store, b"").await;
    assert_eq!(store.stat(&digest).await.unwrap(), Some(0));
    assert!(collect(store.get(&digest, None).await.unwrap()).await.is_empty());
}

async fn an_append_replaces_what_lies_past_its_offset(store: &dyn BlobStore) {
    let id = new_id();
    store.start_upload(&id).await.unwrap();
    assert_eq!(append(store, &id, 0, vec![b"abc", b"def"]).await, 6);
    assert_eq!(append(store, &id, 6, vec![b"ghi"]).await, 9);
    assert_eq!(append(store, &id, 9, vec![b"jkl"]).await, 12);
    // A retry from inside the second append: "gh" stays, "i" and "jkl" go.
    assert_eq!(append(store, &id, 8, vec![b"XY"]).await, 10);
    assert_eq!(read(store, &id, 10).await, b"abcdefghXY");
    // And from inside the first one.
    assert_eq!(append(store, &id, 3, vec![b"Z"]).await, 4);
    assert_eq!(read(store, &id, 4).await, b"abcZ");
    // An empty append only cuts.
    assert_eq!(append(store, &id, 2, vec![]).await, 2);
    assert_eq!(read(store, &id, 2).await, b"ab");
    let listed = store.list_uploads().await.expect("list uploads");
    assert_eq!(listed.iter().find(|f| f.key == id).map(|f| f.size), Some(2));
    assert_eq!(append(store, &id, 2, vec![b"cd"]).await, 4);
    let digest = Digest::sha256_of(b"abcd");
    store.commit_upload(&id, 4, &digest).await.unwrap();
    assert_eq!(collect(store.get(&digest, None).await.unwrap()).await, b"abcd");
}

async fn many_appends_commit_into_one_blob(store: &dyn BlobStore) {
    let data = patterned(100_000);
    let id = new_id();
    store.start_upload(&id).await.unwrap();
    let mut offset = 0;
    for piece in data.chunks(7_919) {
        offset = append(store, &id, offset, piece.chunks(1_000).collect()).await;
    }
    assert_eq!(offset, 100_000);
    assert_eq!(read(store, &id, 50_000).await, &data[..50_000]);
    let digest = Digest::sha256_of(&data);
    store.commit_upload(&id, 100_000, &digest).await.unwrap();
    assert_eq!(store.stat(&digest).await.unwrap(), Some(100_000));
    assert_eq!(collect(store.get(&digest, None).await.unwrap()).await, data);
    let across = collect(store.get(&digest, Some(7_000..9_000)).await.unwrap()).await;
    assert_eq!(across, &data[7_000..9_000]);
    // The session is gone with its bytes.
    assert!(matches!(
        store.read_upload(&id, 1).await,
        Err(StorageError::UploadNotFound)
    ));
    assert!(store
        .list_uploads()
        .await
        .expect("list uploads")
        .iter()
        .all(|f| f.key != id));
}

/// Enough bytes for a multipart upload of several parts where a backend
/// uploads in parts (S3: objects above 24 MiB, in parts of 8 MiB), few
/// enough for a test.
const LARGE: usize = 30 << 20;

async fn a_large_append_streams_through(store: &dyn BlobStore) {
    let data = patterned(LARGE + (1 << 20));
    let id = new_id();
    store.start_upload(&id).await.unwrap();
    let len = append(store, &id, 0, data[..LARGE].chunks(64 << 10).collect()).await;
    assert_eq!(len, LARGE as u64);
    assert!(
        read(store, &id, len).await == data[..LARGE],
        "the large append reads back"
    );
    let total = append(store, &id, len, data[LARGE..].chunks(64 << 10).collect()).await;
    assert_eq!(total, data.len() as u64);
    let digest = Digest::sha256_of(&data);
    store.commit_upload(&id, total, &digest).await.unwrap();
    assert_eq!(store.stat(&digest).await.unwrap(), Some(total));
    let got = collect(store.get(&digest, None).await.unwrap()).await;
    assert!(got == data, "the large blob reads back whole");
    let boundary = 8 << 20;
    let across = collect(store.get(&digest, Some(boundary - 10..boundary + 10)).await.unwrap()).await;
    assert_eq!(across, &data[boundary as usize - 10..boundary as usize + 10]);
    store.delete(&digest).await.unwrap();
}

async fn staged_blobs_appear_only_when_published(store: &dyn BlobStore) {
    let small = b"staged in one request";
    let digest = Digest::sha256_of(small);
    let id = new_id();
    store.start_upload(&id).await.unwrap();
    let staged = store
        .stage_blob(&id, &digest, stream_of(vec![b"staged ", b"in one request"]))
        .await
        .unwrap();
    assert_eq!(staged.len(), small.len() as u64);
    assert_eq!(
        store.stat(&digest).await.unwrap(),
        None,
        "staged bytes are not a blob yet"
    );
    staged.publish().await.unwrap();
    assert_eq!(collect(store.get(&digest, None).await.unwrap()).await, small);
    assert!(
        matches!(store.read_upload(&id, 0).await, Err(StorageError::UploadNotFound)),
        "publishing ends the session"
    );

    // Larger than a part: staged in parts, which must stay invisible when abandoned.
    let data = patterned(LARGE + (1 << 20));
    let digest = Digest::sha256_of(&data);
    let abandoned = new_id();
    store.start_upload(&abandoned).await.unwrap();
    let staged = store
        .stage_blob(&abandoned, &digest, stream_of(data.chunks(64 << 10).collect()))
        .await
        .unwrap();
    assert_eq!(staged.len(), data.len() as u64);
    drop(staged);
    assert_eq!(store.stat(&digest).await.unwrap(), None, "abandoned bytes never show");
    store.cancel_upload(&abandoned).await.unwrap();

    let id = new_id();
    store.start_upload(&id).await.unwrap();
    let staged = store
        .stage_blob(&id, &digest, stream_of(data.chunks(64 << 10).collect()))
        .await
        .unwrap();
    assert_eq!(store.stat(&digest).await.unwrap(), None);
    staged.publish().await.unwrap();
    assert_eq!(store.stat(&digest).await.unwrap(), Some(data.len() as u64));
    assert!(
        collect(store.get(&digest, None).await.unwrap()).await == data,
        "the large staged blob reads back whole"
    );
    assert!(store
        .list_uploads()
        .await
        .unwrap()
        .iter()
        .all(|f| f.key != id && f.key != abandoned));

    // Publishing a blob the store holds already keeps its bytes.
    let again = new_id();
    store.start_upload(&again).await.unwrap();
    // In one chunk larger than a part, which must be split into parts.
    let staged = store
        .stage_blob(&again, &digest, stream_of(vec![&data[..]]))
        .await
        .unwrap();
    staged.publish().await.unwrap();
    assert!(collect(store.get(&digest, None).await.unwrap()).await == data);
    assert!(
        matches!(store.read_upload(&again, 0).await, Err(StorageError::UploadNotFound)),
        "publishing ends the session also when the blob was there"
    );
    store.delete(&digest).await.unwrap();
}

async fn download_urls_are_absent_or_web_addresses(store: &dyn BlobStore) {
    let present = put(store, b"downloadable").await;
    let absent = Digest::sha256_of(b"never downloadable");
    for digest in [&present, &absent] {
        if let Some(url) = store.download_url(digest).await.expect("download url") {
            assert!(url.starts_with("https://") || url.starts_with("http://"), "{url}");
        }
    }
}

async fn missing_things_are_reported(store: &dyn BlobStore) {
    let absent = Digest::sha256_of(b"never stored");
    assert_eq!(store.stat(&absent).await.unwrap(), None);
    assert!(matches!(
        store.get(&absent, None).await,
        Err(StorageError::BlobNotFound)
    ));
    let id = new_id();
    assert!(matches!(
        store.append_upload(&id, 0, stream_of(vec![b"x"])).await,
        Err(StorageError::UploadNotFound)
    ));
    assert!(matches!(
        store.commit_upload(&id, 0, &absent).await,
        Err(StorageError::UploadNotFound)
    ));
}

async fn committing_an_existing_blob_is_idempotent(store: &dyn BlobStore) {
    let a = put(store, b"same bytes").await;
    let b = put(store, b"same bytes").await;
    assert_eq!(a, b);
    assert_eq!(collect(store.get(&a, None).await.unwrap()).await, b"same bytes");
    // Committing drops the session even when the blob was there already.
    let id = new_id();
    store.start_upload(&id).await.unwrap();
    assert_eq!(append(store, &id, 0, vec![b"same ", b"bytes"]).await, 10);
    store.commit_upload(&id, 10, &a).await.unwrap();
    assert!(matches!(
        store.read_upload(&id, 10).await,
        Err(StorageError::UploadNotFound)
    ));
    assert_eq!(collect(store.get(&a, None).await.unwrap()).await, b"same bytes");
}

async fn cancel_drops_the_session(store: &dyn BlobStore) {
    let id = new_id();
    store.start_upload(&id).await.unwrap();
    store.append_upload(&id, 0, stream_of(vec![b"abc"])).await.unwrap();
    store.cancel_upload(&id).await.unwrap();
    assert!(matches!(
        store.read_upload(&id, 3).await,
        Err(StorageError::UploadNotFound)
    ));
    store.cancel_upload(&id).await.unwrap();
}

async fn listings_show_blobs_and_sessions(store: &dyn BlobStore) {
    let digest = put(store, b"listed blob").await;
    let shard = &digest.hex()[..2];
    let listed = store.list_blobs("sha256", shard).await.expect("list blobs");
    let found = listed
        .iter()
        .find(|f| f.key == digest)
        .expect("the blob is listed in its shard");
    assert_eq!(found.size, 11);
    assert!(found.modified_ms > 0);
    let other = if shard == "00" { "01" } else { "00" };
    assert!(store
        .list_blobs("sha256", other)
        .await
        .expect("list another shard")
        .iter()
        .all(|f| f.key != digest));
    let names = store.list_blob_names("sha256", shard).await.expect("list blob names");
    assert!(names.contains(&digest), "{names:?}");
    let mut listed_keys: Vec<&Digest> = listed.iter().map(|f| &f.key).collect();
    let mut name_keys: Vec<&Digest> = names.iter().collect();
    listed_keys.sort();
    name_keys.sort();
    assert_eq!(listed_keys, name_keys, "names and listing show the same blobs");
    assert!(!store
        .list_blob_names("sha256", other)
        .await
        .expect("list another shard's names")
        .contains(&digest));

    let id = new_id();
    store.start_upload(&id).await.expect("start upload");
    let uploads = store.list_uploads().await.expect("list uploads");
    assert!(uploads.iter().any(|f| f.key == id && f.size == 0));
    assert_eq!(append(store, &id, 0, vec![b"abc"]).await, 3);
    assert_eq!(append(store, &id, 3, vec![b"de"]).await, 5);
    let uploads = store.list_uploads().await.expect("list uploads");
    let listed = uploads.iter().find(|f| f.key == id).expect("the session is listed");
    assert_eq!(listed.size, 5);
    assert!(listed.modified_ms > 0);
    store.cancel_upload(&id).await.expect("cancel");
    assert!(store
        .list_uploads()
        .await
        .expect("list uploads")
        .iter()
        .all(|f| f.key != id));
    store.delete(&digest).await.expect("delete");
    assert!(store
        .list_blobs("sha256", shard)
        .await
        .expect("list blobs")
        .iter()
        .all(|f| f.key != digest));
    assert!(!store
        .list_blob_names("sha256", shard)
        .await
        .expect("list blob names")
        .contains(&digest));
}
