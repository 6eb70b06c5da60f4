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

/// Runs every conformance check.
pub async fn run_all(store: &dyn BlobStore) {
    listings_show_blobs_and_sessions(store).await;
    round_trip_and_ranges(store).await;
    chunked_uploads_resume_at_the_acknowledged_offset(store).await;
    missing_things_are_reported(store).await;
    committing_an_existing_blob_is_idempotent(store).await;
    cancel_drops_the_session(store).await;
}

async fn round_trip_and_ranges(store: &dyn BlobStore) {
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let digest = put(store, &data).await;
    assert_eq!(store.stat(&digest).await.unwrap(), Some(data.len() as u64));
    assert_eq!(collect(store.get(&digest, None).await.unwrap()).await, data);
    let part = collect(store.get(&digest, Some(1_000_000..2_500_001)).await.unwrap()).await;
    assert_eq!(part, &data[1_000_000..2_500_001]);
    store.delete(&digest).await.unwrap();
    assert_eq!(store.stat(&digest).await.unwrap(), None);
    store.delete(&digest).await.unwrap();
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

    let id = new_id();
    store.start_upload(&id).await.expect("start upload");
    let uploads = store.list_uploads().await.expect("list uploads");
    assert!(uploads.iter().any(|f| f.key == id && f.size == 0));
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
}
