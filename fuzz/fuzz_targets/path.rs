//! The `/v2/` path parser: a method and a raw (percent-encoded) path.
//!
//! Beyond "never panics": whatever routes, its repository name is a valid
//! name on its own, so no decoded parameter ever leaked into the name.

#![no_main]

use berth_oci::{Endpoint, RepoName};
use libfuzzer_sys::fuzz_target;

const METHODS: [&str; 8] = ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS", "BREW"];

fn repo_of(endpoint: &Endpoint) -> Option<&RepoName> {
    use Endpoint as E;
    match endpoint {
        E::Base | E::Catalog => None,
        E::ListTags { repo }
        | E::GetManifest { repo, .. }
        | E::PutManifest { repo, .. }
        | E::DeleteManifest { repo, .. }
        | E::GetBlob { repo, .. }
        | E::DeleteBlob { repo, .. }
        | E::StartUpload { repo }
        | E::GetUpload { repo, .. }
        | E::PatchUpload { repo, .. }
        | E::FinishUpload { repo, .. }
        | E::CancelUpload { repo, .. }
        | E::ListReferrers { repo, .. } => Some(repo),
        E::Nameless(n) => Some(&n.repo),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, path)) = data.split_first() else {
        return;
    };
    let method = METHODS[usize::from(selector) % METHODS.len()];
    let path = String::from_utf8_lossy(path);
    if let Ok(endpoint) = Endpoint::parse(method, &path) {
        if let Some(repo) = repo_of(&endpoint) {
            let again: RepoName = repo.as_str().parse().expect("a routed name is a valid name");
            assert_eq!(&again, repo);
        }
    }
});
