//! `Accept` negotiation of a manifest read: the request's headers (one per
//! line) against each stored manifest type.
//!
//! Docker schema 2 manifests are served to every client, and a header that
//! names the stored type itself always accepts it.

#![no_main]

use berth_oci::headers::accepts;
use berth_oci::media_type::{self, MANIFEST_TYPES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let headers: Vec<&str> = text.split('\n').collect();
    for stored in MANIFEST_TYPES {
        let accepted = accepts(&headers, stored);
        if stored == media_type::DOCKER_MANIFEST || stored == media_type::DOCKER_MANIFEST_LIST {
            assert!(accepted);
        }
        let mut named = headers.clone();
        named.push(stored);
        assert!(accepts(&named, stored), "{stored} named but refused");
    }
});
