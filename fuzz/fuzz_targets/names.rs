//! The repository name, tag, reference and digest grammars.
//!
//! Every accepted value prints back as exactly the text it was parsed from,
//! and a digest's encoded part has its algorithm's length.

#![no_main]

use berth_oci::{Digest, Reference, RepoName, Tag};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(name) = text.parse::<RepoName>() {
        assert_eq!(name.as_str(), text);
        assert!(name.as_str().len() <= berth_oci::name::MAX_NAME_LEN);
    }
    if let Ok(tag) = text.parse::<Tag>() {
        assert_eq!(tag.as_str(), text);
        assert!(tag.as_str().len() <= 128);
    }
    if let Ok(digest) = text.parse::<Digest>() {
        assert_eq!(digest.to_string(), text);
        assert_eq!(digest.hex().len(), digest.algorithm().hex_len());
    }
    match text.parse::<Reference>() {
        Ok(Reference::Tag(tag)) => assert!(!text.contains(':') && tag.as_str() == text),
        Ok(Reference::Digest(digest)) => assert_eq!(digest.to_string(), text),
        Err(_) => {}
    }
});
