//! The three framings of an Avro datum on Kafka (SPEC 3.1), as pure functions over bytes.
//!
//! Parsing only splits a record into "which writer schema" and "the Avro body"; it never looks
//! the schema up, so it has no I/O and no failure beyond the framing itself.

use super::DecodeError;

/// First byte of the Confluent wire format.
pub const CONFLUENT_MAGIC: u8 = 0x00;
/// First two bytes of Avro single-object encoding.
pub const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];

const CONFLUENT_HEADER_LEN: usize = 1 + 4;
const SINGLE_OBJECT_HEADER_LEN: usize = 2 + 8;

/// Which writer schema a framed record names, and the Avro binary that follows the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framed<'a> {
    /// Confluent wire format: the writer schema is `schema_id` in the Schema Registry.
    Confluent { schema_id: u32, body: &'a [u8] },
    /// Single-object encoding: the writer schema has this CRC-64-AVRO fingerprint.
    SingleObject { fingerprint: u64, body: &'a [u8] },
}

/// Splits a Confluent wire-format record.
pub(crate) fn parse_confluent(bytes: &[u8]) -> Result<Framed<'_>, DecodeError> {
    match bytes {
        [] => Err(DecodeError::Truncated {
            what: "confluent header",
        }),
        [CONFLUENT_MAGIC, rest @ ..] => {
            let (id, body) = rest
                .split_first_chunk::<4>()
                .ok_or(DecodeError::Truncated {
                    what: "confluent header",
                })?;
            Ok(Framed::Confluent {
                schema_id: u32::from_be_bytes(*id),
                body,
            })
        }
        [other, ..] => Err(DecodeError::UnknownMagic {
            expected: "0x00 (confluent)",
            found: *other,
        }),
    }
}

/// Splits an Avro single-object record.
pub(crate) fn parse_single_object(bytes: &[u8]) -> Result<Framed<'_>, DecodeError> {
    match bytes {
        [] | [0xC3] => Err(DecodeError::Truncated {
            what: "single-object header",
        }),
        [0xC3, 0x01, rest @ ..] => {
            let (fp, body) = rest
                .split_first_chunk::<8>()
                .ok_or(DecodeError::Truncated {
                    what: "single-object header",
                })?;
            Ok(Framed::SingleObject {
                fingerprint: u64::from_le_bytes(*fp),
                body,
            })
        }
        [first, ..] => Err(DecodeError::UnknownMagic {
            expected: "0xc3 0x01 (single-object)",
            found: *first,
        }),
    }
}

/// Detects the framing from the first byte(s), as `input_encoding = "auto"` does.
pub(crate) fn parse_auto(bytes: &[u8]) -> Result<Framed<'_>, DecodeError> {
    match bytes.first() {
        None => Err(DecodeError::Truncated {
            what: "record (empty value)",
        }),
        Some(&CONFLUENT_MAGIC) => parse_confluent(bytes),
        Some(&0xC3) => parse_single_object(bytes),
        Some(&other) => Err(DecodeError::UnknownMagic {
            expected: "0x00 (confluent) or 0xc3 0x01 (single-object)",
            found: other,
        }),
    }
}

/// Prefixes an Avro body with the Confluent header.
pub fn frame_confluent(schema_id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(CONFLUENT_HEADER_LEN + body.len());
    out.push(CONFLUENT_MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Prefixes an Avro body with the single-object header.
pub fn frame_single_object(fingerprint: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SINGLE_OBJECT_HEADER_LEN + body.len());
    out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
    out.extend_from_slice(&fingerprint.to_le_bytes());
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confluent_round_trips_with_big_endian_id() {
        let framed = frame_confluent(0x0102_0304, b"body");
        assert_eq!(&framed[..5], &[0, 1, 2, 3, 4]);
        assert_eq!(
            parse_auto(&framed),
            Ok(Framed::Confluent {
                schema_id: 0x0102_0304,
                body: b"body"
            })
        );
    }

    #[test]
    fn single_object_round_trips_with_little_endian_fingerprint() {
        let framed = frame_single_object(0x0807_0605_0403_0201, b"");
        assert_eq!(framed, [0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            parse_auto(&framed),
            Ok(Framed::SingleObject {
                fingerprint: 0x0807_0605_0403_0201,
                body: b""
            })
        );
    }

    #[test]
    fn short_headers_are_truncated() {
        for len in 0..5 {
            let framed = frame_confluent(7, b"");
            assert!(matches!(
                parse_auto(&framed[..len]),
                Err(DecodeError::Truncated { .. })
            ));
        }
        for len in 0..10 {
            let framed = frame_single_object(7, b"");
            assert!(matches!(
                parse_auto(&framed[..len]),
                Err(DecodeError::Truncated { .. })
            ));
        }
    }

    #[test]
    fn unknown_magic_names_the_byte() {
        assert!(matches!(
            parse_auto(b"{\"json\":1}"),
            Err(DecodeError::UnknownMagic { found: b'{', .. })
        ));
        assert!(matches!(
            parse_auto(&[0xC3, 0x02, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(DecodeError::UnknownMagic { found: 0xC3, .. })
        ));
        assert!(matches!(
            parse_confluent(&[0xC3, 0x01]),
            Err(DecodeError::UnknownMagic { found: 0xC3, .. })
        ));
        assert!(matches!(
            parse_single_object(&[0, 0, 0, 0, 1]),
            Err(DecodeError::UnknownMagic { found: 0, .. })
        ));
    }
}
