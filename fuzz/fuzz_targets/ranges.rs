//! `Range` of a blob read and `Content-Range` + `Content-Length` of a chunk.
//!
//! A range resolves inside the blob or not at all; a chunk range accepted
//! with a length covers exactly that many bytes.

#![no_main]

use berth_oci::headers::{ByteRange, ChunkRange};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let (numbers, header) = data.split_at(16);
    let size = u64::from_le_bytes(numbers[..8].try_into().expect("8 bytes"));
    let length = u64::from_le_bytes(numbers[8..].try_into().expect("8 bytes"));
    let header = String::from_utf8_lossy(header);
    if let Some(range) = ByteRange::parse(&header).and_then(|r| r.resolve(size)) {
        assert!(range.start < range.end && range.end <= size, "{range:?} of {size}");
    }
    let declared = (length % 3 != 0).then_some(length);
    if let Ok(Some(chunk)) = ChunkRange::of_chunk(Some(&header), declared) {
        assert!(chunk.start <= chunk.end || declared.is_none());
        if let Some(length) = declared {
            assert_eq!(chunk.byte_count(), Some(length));
        }
    }
});
