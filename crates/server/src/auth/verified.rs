//! Tokens already verified, so that a client presenting the same token on
//! every request (as all do, for its whole lifetime) pays for the signature
//! check and the claims parsing once, not per request.
//!
//! Only tokens whose signature verified are kept, keyed by the whole token
//! text, so a hit is exactly as trustworthy as a fresh check; the expiry is
//! checked on every hit.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::token::AccessClaims;

/// Above this many entries the cache starts over; a registry sees far fewer
/// live tokens than that within one token lifetime.
const MAX_ENTRIES: usize = 50_000;

#[derive(Default)]
pub struct VerifiedTokens {
    map: RwLock<HashMap<Box<str>, Arc<AccessClaims>>>,
}

impl VerifiedTokens {
    /// The claims of `token` if it was verified before and has not expired
    /// at `now_secs`.
    pub fn get(&self, token: &str, now_secs: u64) -> Option<Arc<AccessClaims>> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let claims = map.get(token)?;
        (claims.exp > now_secs).then(|| claims.clone())
    }

    pub fn insert(&self, token: &str, claims: Arc<AccessClaims>, now_secs: u64) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, c| c.exp > now_secs);
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        map.insert(token.into(), claims);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Arc<AccessClaims> {
        Arc::new(AccessClaims {
            iss: "berth".into(),
            sub: "alice".into(),
            aud: "berth".into(),
            exp,
            nbf: 0,
            iat: 0,
            jti: "j".into(),
            typ: "access".into(),
            access: vec![],
            adm: false,
            cat: vec![],
        })
    }

    #[test]
    fn hits_are_exact_and_unexpired() {
        let now = 1_800_000_000;
        let cache = VerifiedTokens::default();
        cache.insert("a.b.c", claims(now + 60), now);
        cache.insert("d.e.f", claims(now - 1), now);
        assert!(cache.get("a.b.c", now).is_some());
        assert!(cache.get("a.b.C", now).is_none());
        assert!(cache.get("a.b.c ", now).is_none());
        assert!(
            cache.get("d.e.f", now).is_none(),
            "expired tokens are not served from the cache"
        );
        assert!(
            cache.get("a.b.c", now + 60).is_none(),
            "nor once the clock passed their expiry"
        );
    }
}
