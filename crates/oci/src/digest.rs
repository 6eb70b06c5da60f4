//! Content digests (`algorithm:hex`) and the streaming hasher that produces them.
//!
//! Only sha256 and sha512 are registered algorithms; anything else that fits the
//! grammar is reported as unsupported rather than invalid.

use std::fmt;
use std::str::FromStr;

use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use sha2::{Digest as _, Sha256, Sha512};

/// A registered digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    /// The algorithm's name as it appears before the colon.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the hex-encoded digest.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// Why a digest string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest {0:?} does not match the grammar algorithm:encoded")]
    Malformed(String),
    #[error("digest algorithm {0:?} is not supported (sha256 and sha512 are)")]
    UnsupportedAlgorithm(String),
    #[error("digest {0:?} has an encoded part of the wrong length or with characters other than lowercase hex")]
    BadEncoding(String),
}

/// A validated content digest such as `sha256:e3b0…`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    /// The algorithm part.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lowercase hex part.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        Digest {
            algorithm: Algorithm::Sha256,
            hex: hex::encode(Sha256::digest(bytes)),
        }
    }

    /// The digest of `bytes` computed with `algorithm`.
    pub fn of(algorithm: Algorithm, bytes: &[u8]) -> Digest {
        let mut h = DigestHasher::new(algorithm);
        h.update(bytes);
        h.finish()
    }
}

fn is_algorithm_component(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl FromStr for Digest {
    type Err = DigestError;

    // distribution-spec: digest ::= algorithm ":" encoded,
    // algorithm ::= component (separator component)*, component ::= [a-z0-9]+,
    // separator ::= [+._-], encoded ::= [a-zA-Z0-9=_-]+
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || DigestError::Malformed(s.to_owned());
        let (alg, encoded) = s.split_once(':').ok_or_else(malformed)?;
        if !alg.split(['+', '.', '_', '-']).all(is_algorithm_component) {
            return Err(malformed());
        }
        if encoded.is_empty()
            || !encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"=_-".contains(&b))
        {
            return Err(malformed());
        }
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => return Err(DigestError::UnsupportedAlgorithm(other.to_owned())),
        };
        if encoded.len() != algorithm.hex_len()
            || !encoded
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DigestError::BadEncoding(s.to_owned()));
        }
        Ok(Digest {
            algorithm,
            hex: encoded.to_owned(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A running digest computation whose state can be saved and restored, so an
/// upload can continue in another request or on another replica.
#[derive(Clone)]
pub enum DigestHasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

/// Version tag of the saved hasher state; bump it when the layout changes.
const HASH_STATE_VERSION: u8 = 1;

impl DigestHasher {
    /// A fresh hasher for `algorithm`.
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => DigestHasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => DigestHasher::Sha512(Sha512::new()),
        }
    }

    /// The algorithm this hasher computes.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            DigestHasher::Sha256(_) => Algorithm::Sha256,
            DigestHasher::Sha512(_) => Algorithm::Sha512,
        }
    }

    /// Feeds more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            DigestHasher::Sha256(h) => h.update(bytes),
            DigestHasher::Sha512(h) => h.update(bytes),
        }
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            DigestHasher::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            DigestHasher::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest { algorithm, hex }
    }

    /// The saved state: a version byte, an algorithm byte, then the hasher's own state.
    pub fn save(&self) -> Vec<u8> {
        let (tag, state) = match self {
            DigestHasher::Sha256(h) => (1u8, h.serialize().to_vec()),
            DigestHasher::Sha512(h) => (2u8, h.serialize().to_vec()),
        };
        let mut out = Vec::with_capacity(state.len() + 2);
        out.push(HASH_STATE_VERSION);
        out.push(tag);
        out.extend_from_slice(&state);
        out
    }

    /// Restores a state written by [`DigestHasher::save`]; `None` when the bytes
    /// come from another version or are damaged, and the caller must re-hash.
    pub fn restore(saved: &[u8]) -> Option<Self> {
        let [version, tag, state @ ..] = saved else {
            return None;
        };
        if *version != HASH_STATE_VERSION {
            return None;
        }
        match tag {
            1 => {
                let s = SerializedState::<Sha256>::try_from(state).ok()?;
                Sha256::deserialize(&s).ok().map(DigestHasher::Sha256)
            }
            2 => {
                let s = SerializedState::<Sha512>::try_from(state).ok()?;
                Sha512::deserialize(&s).ok().map(DigestHasher::Sha512)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_prints_sha256() {
        let d: Digest = EMPTY.parse().unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(Digest::sha256_of(b""), d);
    }

    #[test]
    fn sha512_is_supported() {
        let d = Digest::of(Algorithm::Sha512, b"abc");
        let again: Digest = d.to_string().parse().unwrap();
        assert_eq!(again, d);
        assert_eq!(d.hex().len(), 128);
    }

    #[test]
    fn refuses_bad_digests() {
        assert!(matches!("sha256".parse::<Digest>(), Err(DigestError::Malformed(_))));
        assert!(matches!("sha256:".parse::<Digest>(), Err(DigestError::Malformed(_))));
        assert!(matches!("SHA256:abc".parse::<Digest>(), Err(DigestError::Malformed(_))));
        assert!(matches!(
            "sha256:abc".parse::<Digest>(),
            Err(DigestError::BadEncoding(_))
        ));
        assert!(matches!(
            "sha384:abcdef".parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
        let upper = EMPTY.to_uppercase().replace("SHA256", "sha256");
        assert!(matches!(upper.parse::<Digest>(), Err(DigestError::BadEncoding(_))));
    }

    #[test]
    fn saved_state_continues_the_same_digest() {
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let mut a = DigestHasher::new(alg);
            a.update(b"hello ");
            let mut b = DigestHasher::restore(&a.save()).unwrap();
            a.update(b"world");
            b.update(b"world");
            assert_eq!(a.finish(), b.finish());
        }
        assert!(DigestHasher::restore(&[9, 1, 2, 3]).is_none());
        assert!(DigestHasher::restore(&[1, 1, 2, 3]).is_none());
    }

    proptest::proptest! {
        #[test]
        fn any_chunking_gives_the_same_digest(data: Vec<u8>, cuts: Vec<usize>) {
            let mut h = DigestHasher::new(Algorithm::Sha256);
            let mut rest = &data[..];
            for c in cuts {
                let n = if rest.is_empty() { 0 } else { c % (rest.len() + 1) };
                let (a, b) = rest.split_at(n);
                h = DigestHasher::restore(&h.save()).unwrap();
                h.update(a);
                rest = b;
            }
            h.update(rest);
            proptest::prop_assert_eq!(h.finish(), Digest::sha256_of(&data));
        }

        #[test]
        fn parser_never_panics(s in "\\PC*") {
            let _ = s.parse::<Digest>();
        }
    }
}
