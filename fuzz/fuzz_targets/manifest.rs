//! The manifest and index parser, with the Content-Type a push declares.
//!
//! An accepted manifest holds no negative size, and what the registry reads
//! from it next (the blobs it needs, a referrer's artifact type) is there.

#![no_main]

use berth_oci::{media_type, Manifest};
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: [Option<&str>; 7] = [
    None,
    Some(media_type::OCI_MANIFEST),
    Some(media_type::OCI_INDEX),
    Some(media_type::DOCKER_MANIFEST),
    Some(media_type::DOCKER_MANIFEST_LIST),
    Some(media_type::DOCKER_SCHEMA1_SIGNED),
    Some("application/json; charset=utf-8"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(selector) % CONTENT_TYPES.len()];
    if let Ok(manifest) = Manifest::parse(body, content_type) {
        for blob in manifest.required_blobs() {
            assert!(blob.size >= 0, "a negative size was accepted");
        }
        let _ = manifest.referrer_artifact_type();
    }
});
