//! The distribution API's header grammars: `Range` on a blob read,
//! `Content-Range` (with `Content-Length`) on an upload chunk, and `Accept` on
//! a manifest read.
//!
//! Pure functions of header text, so they are property-tested and fuzzed
//! with the rest of this crate; what a request then does with the result is
//! the server's business.

use std::ops::Range;

use crate::media_type;

/// A single byte range as asked for in a `Range` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=first-` or `bytes=first-last` (inclusive).
    From { first: u64, last: Option<u64> },
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

impl ByteRange {
    /// Parses a `Range: bytes=…` header. Anything but one well-formed byte
    /// range is `None`: HTTP lets a server ignore such a header and send the
    /// whole representation.
    pub fn parse(value: &str) -> Option<ByteRange> {
        let spec = value.trim().strip_prefix("bytes=")?;
        if spec.contains(',') {
            return None;
        }
        let (first, last) = spec.split_once('-')?;
        let (first, last) = (first.trim(), last.trim());
        if first.is_empty() {
            return decimal(last).map(ByteRange::Suffix);
        }
        let first = decimal(first)?;
        let last = if last.is_empty() { None } else { Some(decimal(last)?) };
        Some(ByteRange::From { first, last })
    }

    /// The range within a blob of `size` bytes (end exclusive), or `None` when unsatisfiable.
    pub fn resolve(self, size: u64) -> Option<Range<u64>> {
        match self {
            ByteRange::From { first, last } => {
                let end = last.map_or(size, |l| l.saturating_add(1).min(size));
                (first < size && first < end).then_some(first..end)
            }
            ByteRange::Suffix(n) => (n > 0 && size > 0).then(|| size.saturating_sub(n)..size),
        }
    }
}

/// A run of ASCII digits as a number (`u64::from_str` would also take a `+`).
fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A chunk's declared position: `Content-Range: start-end` (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRange {
    pub start: u64,
    pub end: u64,
}

/// Why a chunk's `Content-Range` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkRangeError {
    #[error("malformed Content-Range {0:?}")]
    Malformed(String),
    #[error("Content-Range {start}-{end} does not match Content-Length {length}")]
    LengthMismatch { start: u64, end: u64, length: u64 },
}

impl ChunkRange {
    /// Parses an upload chunk's `Content-Range: <start>-<end>`. Clients send
    /// it in several shapes, all taken: a `bytes ` or `bytes=` prefix, and a
    /// `/<size>` or `/*` suffix (which is ignored).
    // distribution-spec: the range MUST match ^[0-9]+-[0-9]+$; Docker-era clients add the HTTP unit.
    pub fn parse(value: &str) -> Result<ChunkRange, ChunkRangeError> {
        let spec = value.trim();
        let spec = spec
            .strip_prefix("bytes")
            .map(|s| s.trim_start_matches([' ', '=']))
            .unwrap_or(spec);
        let spec = spec.split('/').next().unwrap_or_default();
        spec.split_once('-')
            .and_then(|(start, end)| {
                Some(ChunkRange {
                    start: decimal(start.trim())?,
                    end: decimal(end.trim())?,
                })
            })
            .ok_or_else(|| ChunkRangeError::Malformed(value.to_owned()))
    }

    /// The chunk's `Content-Range` checked against its `Content-Length`,
    /// when it has both: an inclusive range of exactly that many bytes.
    pub fn of_chunk(
        content_range: Option<&str>,
        content_length: Option<u64>,
    ) -> Result<Option<ChunkRange>, ChunkRangeError> {
        let Some(range) = content_range.map(ChunkRange::parse).transpose()? else {
            return Ok(None);
        };
        if let Some(length) = content_length {
            if range.byte_count() != Some(length) {
                return Err(ChunkRangeError::LengthMismatch {
                    start: range.start,
                    end: range.end,
                    length,
                });
            }
        }
        Ok(Some(range))
    }

    /// How many bytes the range covers; `None` when it ends before it starts
    /// or covers all 2^64 offsets.
    pub fn byte_count(self) -> Option<u64> {
        self.end.checked_sub(self.start)?.checked_add(1)
    }
}

/// Whether the `Accept` headers of a request allow a manifest stored as `stored`.
///
/// Only a header that names manifest types is a negotiation; `*/*`, wildcards
/// and headers that name no manifest type at all accept anything. As in the
/// reference registry, only OCI manifests are refused to clients that do not
/// name them: Docker schema 2 is what every Docker-era client understands, and
/// Berth converts nothing.
pub fn accepts<S: AsRef<str>>(accept: &[S], stored: &str) -> bool {
    if stored == media_type::DOCKER_MANIFEST || stored == media_type::DOCKER_MANIFEST_LIST {
        return true;
    }
    let named: Vec<String> = accept
        .iter()
        .flat_map(|h| h.as_ref().split(','))
        .map(media_type::essence)
        .filter(|t| !t.is_empty())
        .collect();
    let negotiating = named.iter().any(|t| media_type::MANIFEST_TYPES.contains(&t.as_str()));
    !negotiating || named.iter().any(|t| t == stored || t == "*/*" || t == "application/*")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn range_headers() {
        let from = |first, last| Some(ByteRange::From { first, last });
        assert_eq!(ByteRange::parse("bytes=0-9"), from(0, Some(9)));
        assert_eq!(ByteRange::parse(" bytes=5- "), from(5, None));
        assert_eq!(ByteRange::parse("bytes=-5"), Some(ByteRange::Suffix(5)));
        for ignored in [
            "bytes=0-1,4-5",
            "items=0-1",
            "bytes=a-b",
            "bytes=-",
            "bytes=+1-2",
            "bytes=1-+2",
            "",
        ] {
            assert_eq!(ByteRange::parse(ignored), None, "{ignored:?}");
        }
        assert_eq!(ByteRange::parse("bytes=18446744073709551616-"), None);
    }

    #[test]
    fn ranges_resolve_within_the_blob() {
        let from = |first, last| ByteRange::From { first, last };
        assert_eq!(from(0, Some(9)).resolve(100), Some(0..10));
        assert_eq!(from(90, Some(200)).resolve(100), Some(90..100));
        assert_eq!(from(10, None).resolve(100), Some(10..100));
        assert_eq!(from(100, None).resolve(100), None);
        assert_eq!(from(5, Some(4)).resolve(100), None);
        assert_eq!(from(0, Some(u64::MAX)).resolve(100), Some(0..100));
        assert_eq!(ByteRange::Suffix(10).resolve(100), Some(90..100));
        assert_eq!(ByteRange::Suffix(1000).resolve(100), Some(0..100));
        assert_eq!(ByteRange::Suffix(0).resolve(100), None);
        assert_eq!(ByteRange::Suffix(5).resolve(0), None);
    }

    #[test]
    fn chunk_ranges() {
        let range = |start, end| Ok(ChunkRange { start, end });
        assert_eq!(ChunkRange::parse("0-9"), range(0, 9));
        assert_eq!(ChunkRange::parse("bytes 10-19/100"), range(10, 19));
        assert_eq!(ChunkRange::parse("bytes=10-19/*"), range(10, 19));
        for bad in [
            "",
            "-",
            "5",
            "a-b",
            "0-",
            "-9",
            "+0-9",
            "0--9",
            "18446744073709551616-0",
        ] {
            assert!(ChunkRange::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(ChunkRange::of_chunk(None, Some(5)), Ok(None));
        assert_eq!(
            ChunkRange::of_chunk(Some("0-4"), Some(5)),
            Ok(Some(ChunkRange { start: 0, end: 4 }))
        );
        assert_eq!(
            ChunkRange::of_chunk(Some("0-4"), None),
            Ok(Some(ChunkRange { start: 0, end: 4 }))
        );
        assert!(matches!(
            ChunkRange::of_chunk(Some("0-4"), Some(4)),
            Err(ChunkRangeError::LengthMismatch { .. })
        ));
        assert!(matches!(
            ChunkRange::of_chunk(Some("5-4"), Some(0)),
            Err(ChunkRangeError::LengthMismatch { .. })
        ));
        assert!(ChunkRange::of_chunk(Some(&format!("0-{}", u64::MAX)), Some(u64::MAX)).is_err());
    }

    #[test]
    fn accept_negotiation() {
        let oci = media_type::OCI_INDEX;
        let none: [&str; 0] = [];
        assert!(accepts(&none, oci));
        assert!(accepts(&["application/json"], oci));
        assert!(accepts(&["*/*"], oci));
        assert!(accepts(&[format!("{}, {oci}", media_type::DOCKER_MANIFEST)], oci));
        assert!(accepts(
            &[media_type::DOCKER_MANIFEST.to_owned(), format!("{oci}; q=0.5")],
            oci
        ));
        assert!(!accepts(&[media_type::DOCKER_MANIFEST], oci));
        assert!(accepts(&[media_type::DOCKER_MANIFEST, "*/*"], oci));
        assert!(accepts(&[oci.to_uppercase()], oci));
        // Docker schema 2 is served whatever the client names.
        assert!(accepts(&[media_type::OCI_MANIFEST], media_type::DOCKER_MANIFEST));
        assert!(accepts(&[oci], media_type::DOCKER_MANIFEST_LIST));
        assert!(!accepts(&[oci], media_type::OCI_MANIFEST));
    }

    proptest! {
        #[test]
        fn a_parsed_range_resolves_inside_the_blob(value in "(bytes=)?[0-9 -]{0,12}", size: u64) {
            if let Some(range) = ByteRange::parse(&value).and_then(|r| r.resolve(size)) {
                prop_assert!(range.start < range.end && range.end <= size);
            }
        }

        #[test]
        fn a_written_chunk_range_parses_back(start: u64, end: u64) {
            prop_assert_eq!(ChunkRange::parse(&format!("{start}-{end}")), Ok(ChunkRange { start, end }));
        }

        #[test]
        fn header_parsers_never_panic(value in "\\PC*", length: Option<u64>) {
            let _ = ByteRange::parse(&value);
            let _ = ChunkRange::of_chunk(Some(&value), length);
            let _ = accepts(&[&value], media_type::OCI_MANIFEST);
        }
    }
}
