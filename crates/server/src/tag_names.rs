//! What a tag's name says about its life: `--ttl-7d` and `--idle-30d`
//! suffixes, and the signature schema (`sha256-<hex>[.sig|.att|.sbom]`) whose
//! tags live exactly as long as their subject.

use std::str::FromStr;

use berth_oci::Digest;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// Shortest and longest lifetime a suffix may ask for.
const MIN_WINDOW_MS: i64 = HOUR_MS;
const MAX_WINDOW_MS: i64 = 365 * DAY_MS;

/// A lifetime a tag's suffix asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuffixRule {
    /// Expires this long after the tag was pushed.
    Ttl { window_ms: i64 },
    /// Expires after this long without a pull (or a push) of the tag.
    Idle { window_ms: i64 },
}

impl SuffixRule {
    pub fn name(self) -> &'static str {
        match self {
            SuffixRule::Ttl { .. } => "ttl",
            SuffixRule::Idle { .. } => "idle",
        }
    }

    pub fn window_ms(self) -> i64 {
        match self {
            SuffixRule::Ttl { window_ms } | SuffixRule::Idle { window_ms } => window_ms,
        }
    }
}

/// Why a suffix is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tag {tag:?}: {problem}")]
pub struct SuffixError {
    pub tag: String,
    pub problem: String,
}

/// The lifetime rule in a tag's last `--ttl-…` or `--idle-…` segment, if any.
///
/// A segment that starts like a rule but is not a valid one (`--ttl-7x`,
/// `--ttl-0h`, `--idle-400d`) is an error, so a typo never silently makes a
/// tag permanent.
pub fn suffix_rule(tag: &str) -> Result<Option<SuffixRule>, SuffixError> {
    let Some(at) = tag.rfind("--") else {
        return Ok(None);
    };
    let segment = &tag[at + 2..];
    let (kind, spec) = if let Some(spec) = segment.strip_prefix("ttl-") {
        ("ttl", spec)
    } else if let Some(spec) = segment.strip_prefix("idle-") {
        ("idle", spec)
    } else {
        return Ok(None);
    };
    let error = |problem: String| SuffixError {
        tag: tag.to_string(),
        problem,
    };
    let window_ms = parse_window(spec).ok_or_else(|| {
        error(format!(
            "--{kind}-{spec} is not a lifetime; write a number and h, d or w, such as --{kind}-7d"
        ))
    })?;
    if !(MIN_WINDOW_MS..=MAX_WINDOW_MS).contains(&window_ms) {
        return Err(error(format!("--{kind}-{spec} is outside the allowed 1h to 365d")));
    }
    Ok(Some(match kind {
        "ttl" => SuffixRule::Ttl { window_ms },
        _ => SuffixRule::Idle { window_ms },
    }))
}

fn parse_window(spec: &str) -> Option<i64> {
    let unit = spec.chars().last()?;
    let number = &spec[..spec.len() - unit.len_utf8()];
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) || number.len() > 6 {
        return None;
    }
    let n: i64 = number.parse().ok()?;
    let unit_ms = match unit {
        'h' => HOUR_MS,
        'd' => DAY_MS,
        'w' => 7 * DAY_MS,
        _ => return None,
    };
    n.checked_mul(unit_ms)
}

/// The subject of a signature-schema tag: `sha256-<hex>` (the referrers
/// tag schema) optionally followed by `.sig`, `.att` or `.sbom` (cosign).
pub fn signature_subject(tag: &str) -> Option<Digest> {
    let rest = tag.strip_prefix("sha256-")?;
    let hex = match rest.split_once('.') {
        Some((hex, "sig" | "att" | "sbom")) => hex,
        Some(_) => return None,
        None => rest,
    };
    if hex.len() != 64 {
        return None;
    }
    Digest::from_str(&format!("sha256:{hex}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_name_a_lifetime() {
        assert_eq!(
            suffix_rule("main--ttl-7d"),
            Ok(Some(SuffixRule::Ttl { window_ms: 7 * DAY_MS }))
        );
        assert_eq!(
            suffix_rule("pr-12--idle-30d"),
            Ok(Some(SuffixRule::Idle { window_ms: 30 * DAY_MS }))
        );
        assert_eq!(
            suffix_rule("x--ttl-1h"),
            Ok(Some(SuffixRule::Ttl { window_ms: HOUR_MS }))
        );
        assert_eq!(
            suffix_rule("x--ttl-2w"),
            Ok(Some(SuffixRule::Ttl { window_ms: 14 * DAY_MS }))
        );
        assert_eq!(
            suffix_rule("a--b--ttl-365d"),
            Ok(Some(SuffixRule::Ttl {
                window_ms: 365 * DAY_MS
            }))
        );
        assert_eq!(suffix_rule("main"), Ok(None));
        assert_eq!(suffix_rule("feature--login"), Ok(None));
        assert_eq!(suffix_rule("v1-ttl-7d"), Ok(None));
    }

    #[test]
    fn malformed_or_out_of_window_suffixes_are_errors() {
        for tag in [
            "a--ttl-0h",
            "a--ttl-30m",
            "a--ttl-366d",
            "a--ttl-53w",
            "a--idle-7x",
            "a--ttl-",
            "a--ttl-d",
            "a--ttl-7d-x",
            "a--ttl-99999999999d",
        ] {
            let err = suffix_rule(tag).unwrap_err();
            assert_eq!(err.tag, tag);
        }
        assert!(suffix_rule("a--ttl-366d").unwrap_err().problem.contains("1h to 365d"));
    }

    #[test]
    fn signature_tags_name_their_subject() {
        let hex = "a".repeat(64);
        let subject: Digest = format!("sha256:{hex}").parse().unwrap();
        for tag in [
            format!("sha256-{hex}"),
            format!("sha256-{hex}.sig"),
            format!("sha256-{hex}.att"),
            format!("sha256-{hex}.sbom"),
        ] {
            assert_eq!(signature_subject(&tag), Some(subject.clone()), "{tag}");
        }
        assert_eq!(signature_subject(&format!("sha256-{hex}.txt")), None);
        assert_eq!(signature_subject("sha256-abc.sig"), None);
        assert_eq!(signature_subject("v1.0"), None);
    }
}
