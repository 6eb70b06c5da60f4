//! The token endpoint's request parser: a query (`GET`) or an OAuth2 form
//! body (`POST`), with its scopes.

#![no_main]

use berth_server::fuzzing::TokenRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, pairs)) = data.split_first() else {
        return;
    };
    let _ = TokenRequest::parse(pairs, selector & 1 == 1);
});
