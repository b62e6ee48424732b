//! ElevenLabs' webhook signature: `ElevenLabs-Signature: t=<unix s>,v0=<hex HMAC-SHA256>`
//! over `"<t>.<raw body>"`. Shared by the simulator (signing), the server (verifying) and
//! tests, so both sides cannot drift apart.
//!
//! Stricter than the official SDKs on purpose: parts are trimmed, any `v0` entry may match
//! (key rotation), the comparison is constant-time, and timestamps too far in the future
//! are refused as well as stale ones.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The header ElevenLabs signs its webhooks with (HTTP header names are case-insensitive).
pub const SIGNATURE_HEADER: &str = "ElevenLabs-Signature";

/// ElevenLabs' own tolerance: 30 minutes.
pub const DEFAULT_TOLERANCE_SECS: i64 = 30 * 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature header is malformed")]
    Malformed,
    #[error("signature header has no timestamp")]
    MissingTimestamp,
    #[error("signature header has no v0 signature")]
    NoV0,
    #[error("signature timestamp is too old")]
    Stale,
    #[error("signature timestamp is too far in the future")]
    FutureSkewed,
    #[error("signature does not match the payload")]
    Mismatch,
}

/// The full header value for `body` signed at `timestamp` (unix seconds).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let digest = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v0={}", hex::encode(digest))
}

/// Checks a header value against the raw request body. `now` is unix seconds; a
/// timestamp more than `tolerance_secs` away from it is refused.
pub fn verify(
    secret: &str,
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let mut verifier = Verifier::new(secret, header, now, tolerance_secs)?;
    verifier.update(body);
    verifier.finish()
}

/// [`verify`] for a body that arrives in pieces: the header is checked when it is made,
/// the HMAC is computed as the body streams in, and compared by [`Verifier::finish`], so
/// a server holds no second copy of the body and learns of a mismatch at its last byte.
pub struct Verifier<'h> {
    mac: HmacSha256,
    v0: Vec<&'h str>,
}

impl<'h> Verifier<'h> {
    /// Checks the header's form, `v0` and age (as [`check_header`]).
    pub fn new(
        secret: &str,
        header: &'h str,
        now: i64,
        tolerance_secs: i64,
    ) -> Result<Self, SignatureError> {
        let (timestamp, v0) = checked(header, now, tolerance_secs)?;
        Ok(Self {
            mac: mac(secret, timestamp, b""),
            v0,
        })
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.mac.update(chunk);
    }

    /// Whether any `v0` of the header is the HMAC of everything passed to `update`.
    pub fn finish(self) -> Result<(), SignatureError> {
        let matches = self.v0.iter().any(|candidate| {
            // Not hex cannot match; it does not make the whole header unusable.
            hex::decode(candidate)
                .map(|bytes| self.mac.clone().verify_slice(&bytes).is_ok())
                .unwrap_or(false)
        });
        if matches {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

/// The checks that need no body: the header is well formed, carries a `v0` entry, and its
/// timestamp is within `tolerance_secs` of `now`. A server can refuse a request with this
/// before reading its body; [`verify`] repeats these checks and compares the HMAC.
pub fn check_header(header: &str, now: i64, tolerance_secs: i64) -> Result<(), SignatureError> {
    checked(header, now, tolerance_secs).map(|_| ())
}

fn checked(
    header: &str,
    now: i64,
    tolerance_secs: i64,
) -> Result<(i64, Vec<&str>), SignatureError> {
    let parsed = parse(header)?;
    let timestamp = parsed.timestamp.ok_or(SignatureError::MissingTimestamp)?;
    if parsed.v0.is_empty() {
        return Err(SignatureError::NoV0);
    }
    let age = now.saturating_sub(timestamp);
    if age > tolerance_secs {
        return Err(SignatureError::Stale);
    }
    if age < tolerance_secs.saturating_neg() {
        return Err(SignatureError::FutureSkewed);
    }
    Ok((timestamp, parsed.v0))
}

struct ParsedHeader<'a> {
    timestamp: Option<i64>,
    v0: Vec<&'a str>,
}

fn parse(header: &str) -> Result<ParsedHeader<'_>, SignatureError> {
    if header.trim().is_empty() {
        return Err(SignatureError::Malformed);
    }
    let mut parsed = ParsedHeader {
        timestamp: None,
        v0: Vec::new(),
    };
    // Empty parts (a trailing comma) are tolerated; unknown schemes (`v1=`) are ignored.
    for part in header.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').ok_or(SignatureError::Malformed)?;
        match key.trim() {
            "t" => {
                // Two timestamps would make it ambiguous which one was signed.
                if parsed.timestamp.is_some() {
                    return Err(SignatureError::Malformed);
                }
                let t = value
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| SignatureError::Malformed)?;
                parsed.timestamp = Some(t);
            }
            "v0" => parsed.v0.push(value.trim()),
            "" => return Err(SignatureError::Malformed),
            _ => {}
        }
    }
    Ok(parsed)
}

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length (long ones are hashed), so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes())
        .expect("HMAC-SHA256 accepts keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "wsec_test_secret";
    const T: i64 = 1_739_537_297;
    const BODY: &[u8] = br#"{"type":"post_call_transcription","event_timestamp":1739537297,"data":{"agent_id":"xyz","conversation_id":"abc"}}"#;
    const V0: &str = "56c255208ac31944e833c7edacb091a1d845f075a6a781576269c7ff188bc125";

    #[test]
    fn a_body_verified_in_pieces_matches_the_whole() {
        let header = format!("t={T},v0={V0}");
        let mut verifier = Verifier::new(SECRET, &header, T, 1800).expect("header ok");
        for piece in BODY.chunks(7) {
            verifier.update(piece);
        }
        assert_eq!(verifier.finish(), Ok(()));
        let mut short = Verifier::new(SECRET, &header, T, 1800).expect("header ok");
        short.update(&BODY[..BODY.len() - 1]);
        assert_eq!(short.finish(), Err(SignatureError::Mismatch));
        assert!(
            Verifier::new(SECRET, &header, T + 3600, 1800).is_err(),
            "stale"
        );
    }

    #[test]
    fn known_vector_signs_and_verifies() {
        assert_eq!(sign(SECRET, T, BODY), format!("t={T},v0={V0}"));
        assert_eq!(
            verify(SECRET, &format!("t={T},v0={V0}"), BODY, T, 1800),
            Ok(())
        );
    }

    #[test]
    fn tampered_body_and_wrong_secret_mismatch() {
        let header = sign(SECRET, T, BODY);
        let mut tampered = BODY.to_vec();
        tampered[2] = b'T';
        assert_eq!(
            verify(SECRET, &header, &tampered, T, 1800),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("wsec_other", &header, BODY, T, 1800),
            Err(SignatureError::Mismatch)
        );
        // The timestamp is part of the signed message.
        let moved = format!("t={},v0={V0}", T + 1);
        assert_eq!(
            verify(SECRET, &moved, BODY, T, 1800),
            Err(SignatureError::Mismatch)
        );
        // A truncated or non-hex signature is a mismatch, not a crash.
        let short = format!("t={T},v0={}", &V0[..10]);
        assert_eq!(
            verify(SECRET, &short, BODY, T, 1800),
            Err(SignatureError::Mismatch)
        );
        let not_hex = format!("t={T},v0=zz");
        assert_eq!(
            verify(SECRET, &not_hex, BODY, T, 1800),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn stale_and_future_timestamps_are_refused_at_the_tolerance_edge() {
        let header = sign(SECRET, T, BODY);
        assert_eq!(verify(SECRET, &header, BODY, T + 1800, 1800), Ok(()));
        assert_eq!(
            verify(SECRET, &header, BODY, T + 1801, 1800),
            Err(SignatureError::Stale)
        );
        assert_eq!(verify(SECRET, &header, BODY, T - 1800, 1800), Ok(()));
        assert_eq!(
            verify(SECRET, &header, BODY, T - 1801, 1800),
            Err(SignatureError::FutureSkewed)
        );
        // Extreme values do not overflow.
        let far = sign(SECRET, i64::MIN, BODY);
        assert_eq!(
            verify(SECRET, &far, BODY, i64::MAX, 1800),
            Err(SignatureError::Stale)
        );
        let far = sign(SECRET, i64::MAX, BODY);
        assert_eq!(
            verify(SECRET, &far, BODY, i64::MIN, 1800),
            Err(SignatureError::FutureSkewed)
        );
    }

    #[test]
    fn the_header_alone_is_checked_without_a_body() {
        let header = format!("t={T},v0={V0}");
        assert_eq!(check_header(&header, T, 1800), Ok(()));
        assert_eq!(
            check_header(&header, T + 1801, 1800),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            check_header(&format!("t={T}"), T, 1800),
            Err(SignatureError::NoV0)
        );
        assert_eq!(
            check_header("nonsense", T, 1800),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn malformed_headers_are_classified() {
        let v = |h: &str| verify(SECRET, h, BODY, T, 1800);
        assert_eq!(v(""), Err(SignatureError::Malformed));
        assert_eq!(v("   "), Err(SignatureError::Malformed));
        assert_eq!(v("garbage"), Err(SignatureError::Malformed));
        assert_eq!(v(&format!("t=abc,v0={V0}")), Err(SignatureError::Malformed));
        assert_eq!(
            v(&format!("t={T},t={T},v0={V0}")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(v(&format!("={T},v0={V0}")), Err(SignatureError::Malformed));
        assert_eq!(
            v(&format!("v0={V0}")),
            Err(SignatureError::MissingTimestamp)
        );
        assert_eq!(v(&format!("t={T}")), Err(SignatureError::NoV0));
        assert_eq!(v(&format!("t={T},v1={V0}")), Err(SignatureError::NoV0));
    }

    #[test]
    fn whitespace_and_several_v0_entries_are_accepted() {
        let v = |h: &str| verify(SECRET, h, BODY, T, 1800);
        assert_eq!(v(&format!(" t={T} , v0={V0} ")), Ok(()));
        assert_eq!(v(&format!("t={T},v0=deadbeef,v0={V0}")), Ok(()));
        assert_eq!(v(&format!("t={T},v0={V0},v0=deadbeef,")), Ok(()));
        assert_eq!(v(&format!("v0={V0},t={T},v1=ignored")), Ok(()));
        assert_eq!(
            v(&format!("t={T},v0=deadbeef,v0=cafe")),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(v(&format!("t={T},v0={}", V0.to_uppercase())), Ok(()));
    }
}
