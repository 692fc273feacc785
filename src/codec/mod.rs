//! The Avro codec of SPEC section 3: decodes `MerchantRegistrationDecided` input values in every
//! framing (Confluent wire format, Avro single-object encoding, raw Avro binary), encodes
//! `RegistrationNotifyOutcome` values (Confluent, single-object or JSON), and encodes input events
//! for `regnotify produce`, the demo and tests.
//!
//! It owns the schemas of `schemas/` (built into the binary) and the Schema Registry client. It
//! never panics on input bytes, allocates at most [`MAX_AVRO_ALLOCATION_BYTES`] for any one
//! length-prefixed value, and rejects a datum followed by extra bytes: one record is one datum, so
//! trailing bytes mean the writer schema is not what the header claims. Every failure is a typed
//! error that says whether it is the record's fault (dead-letter it) or the registry's (retry).

mod decode;
mod encode;
pub mod framing;
pub(crate) mod registry;
pub mod schemas;
pub(crate) mod value;

pub use decode::{EventDecoder, decode_outcome};
pub use encode::{
    EventEncoder, OutcomeEncoder, encode_event_confluent, encode_event_raw,
    encode_event_single_object, encode_outcome_confluent, encode_outcome_json,
    encode_outcome_single_object, event_from_json,
};
pub(crate) use registry::RegistryError;
pub use registry::SchemaRegistryClient;

/// The largest single allocation apache-avro may make while decoding (a string, bytes or fixed
/// length prefix). Input records are small; a hostile length prefix fails instead of allocating.
pub(crate) const MAX_AVRO_ALLOCATION_BYTES: usize = 1024 * 1024;

/// Why an input value could not be decoded into an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown magic byte 0x{found:02x}, expected {expected}")]
    UnknownMagic { expected: &'static str, found: u8 },
    #[error("truncated {what}")]
    Truncated { what: &'static str },
    #[error("schema id {0} is unknown to the schema registry")]
    UnknownSchemaId(u32),
    #[error("schema id {schema_id} is not a usable avro schema: {reason}")]
    UnusableWriterSchema { schema_id: u32, reason: String },
    #[error("no kept schema has fingerprint 0x{0:016x}")]
    UnknownFingerprint(u64),
    #[error("confluent record with schema id {0} but no schema registry is configured")]
    RegistryNotConfigured(u32),
    #[error("avro body does not match its writer schema: {0}")]
    Malformed(String),
    #[error("{0} bytes left over after the avro datum")]
    TrailingBytes(usize),
    #[error("writer schema does not resolve against the reader schema: {0}")]
    SchemaMismatch(String),
    #[error("field {field}: {reason}")]
    InvalidValue { field: &'static str, reason: String },
    /// The registry did not answer usefully; not the record's fault.
    #[error("schema registry unavailable: {0}")]
    RegistryUnavailable(String),
}

impl DecodeError {
    /// Whether decoding the same bytes again later may succeed (retry, never dead-letter).
    pub fn is_transient(&self) -> bool {
        matches!(self, DecodeError::RegistryUnavailable(_))
    }
}

impl From<RegistryError> for DecodeError {
    fn from(error: RegistryError) -> Self {
        match error {
            RegistryError::UnknownSchemaId(id) => DecodeError::UnknownSchemaId(id),
            RegistryError::UnusableSchema { schema_id, reason } => {
                DecodeError::UnusableWriterSchema { schema_id, reason }
            }
            // Fetching never registers; should a refusal appear, it is still the registry's side.
            RegistryError::Unavailable(reason) => DecodeError::RegistryUnavailable(reason),
            RegistryError::Refused { .. } => DecodeError::RegistryUnavailable(error.to_string()),
        }
    }
}

/// Why a record could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{field} cannot be encoded: {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error("value does not match the schema: {0}")]
    Avro(String),
    #[error("confluent framing needs a schema registry")]
    RegistryNotConfigured,
    #[error("schema registry refused the schema: {0}")]
    RegistryRefused(String),
    /// The registry did not answer usefully; encoding again later may succeed.
    #[error("schema registry unavailable: {0}")]
    RegistryUnavailable(String),
}

impl EncodeError {
    /// Whether encoding again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, EncodeError::RegistryUnavailable(_))
    }
}

impl From<RegistryError> for EncodeError {
    fn from(error: RegistryError) -> Self {
        match error {
            RegistryError::Unavailable(reason) => EncodeError::RegistryUnavailable(reason),
            other => EncodeError::RegistryRefused(other.to_string()),
        }
    }
}

/// Caps apache-avro's allocations (a process-wide, set-once setting; the first caller wins).
fn limit_avro_allocations() {
    apache_avro::util::max_allocation_bytes(MAX_AVRO_ALLOCATION_BYTES);
}
