//! The Avro schemas of SPEC section 3, built into the binary from `schemas/`.
//!
//! Every version of the input schema that producers may still write with is kept here, so that
//! single-object records (which name their writer schema only by fingerprint) stay decodable after
//! the schema evolves. The newest version is the reader schema every record is resolved against.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use apache_avro::Schema;

/// One schema file of `schemas/`, as built into the binary.
#[derive(Debug, Clone, Copy)]
pub struct SchemaFile {
    /// The file name under `schemas/`.
    pub file: &'static str,
    /// The schema JSON, byte for byte as in the file.
    pub json: &'static str,
}

/// Every kept version of `MerchantRegistrationDecided`, oldest first; the last is the reader
/// schema. To evolve the schema, keep the old file (renamed, e.g. `…Decided.v1.avsc`), add it
/// here before the current one, and edit `MerchantRegistrationDecided.avsc`.
pub const INPUT_SCHEMA_VERSIONS: &[SchemaFile] = &[SchemaFile {
    file: "MerchantRegistrationDecided.avsc",
    json: include_str!("../../schemas/MerchantRegistrationDecided.avsc"),
}];

/// The `RegistrationNotifyOutcome` schema we write with.
pub const OUTCOME_SCHEMA: SchemaFile = SchemaFile {
    file: "RegistrationNotifyOutcome.avsc",
    json: include_str!("../../schemas/RegistrationNotifyOutcome.avsc"),
};

/// The CRC-64-AVRO (Rabin) fingerprint of a schema's parsing canonical form, as the `u64` whose
/// little-endian bytes follow `0xC3 0x01` in single-object encoding.
pub fn fingerprint(schema: &Schema) -> u64 {
    crc64_avro(canonical_form(schema).as_bytes())
}

/// The schema's Parsing Canonical Form as the Avro specification defines it.
///
/// apache-avro 0.21 strips `logicalType` but leaves the stripped primitive as an object
/// (`{"type":"string"}` for a uuid), where the specification's [PRIMITIVES] rule, Java and
/// fastavro write the plain name (`"string"`). The fingerprints then differ and single-object
/// records from other producers would not be recognised (AVRO-4004; found by the fastavro
/// cross-check in `tests/it/codec.rs`). Names and symbols cannot contain quotes or braces, and
/// defaults are stripped, so the patterns below can only match a schema.
pub fn canonical_form(schema: &Schema) -> String {
    const PRIMITIVES: [&str; 8] = [
        "null", "boolean", "int", "long", "float", "double", "bytes", "string",
    ];
    let mut form = schema.canonical_form();
    for primitive in PRIMITIVES {
        form = form.replace(
            &format!(r#"{{"type":"{primitive}"}}"#),
            &format!(r#""{primitive}""#),
        );
    }
    form
}

/// CRC-64-AVRO as given in the Avro specification ("Schema Fingerprints").
fn crc64_avro(bytes: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    static TABLE: LazyLock<[u64; 256]> = LazyLock::new(|| {
        let mut table = [0u64; 256];
        for (i, slot) in (0u64..).zip(table.iter_mut()) {
            let mut fp = i;
            for _ in 0..8 {
                fp = (fp >> 1) ^ (EMPTY & (fp & 1).wrapping_neg());
            }
            *slot = fp;
        }
        table
    });
    bytes.iter().fold(EMPTY, |fp, &b| {
        (fp >> 8) ^ TABLE[usize::from((fp as u8) ^ b)]
    })
}

/// A parsed schema with its fingerprint, ready for decoding and single-object framing.
#[derive(Debug)]
pub struct KnownSchema {
    pub(crate) schema: Schema,
    pub fingerprint: u64,
    /// The schema JSON as registered with a Schema Registry.
    pub(crate) json: &'static str,
}

impl KnownSchema {
    fn parse(file: &SchemaFile) -> Arc<KnownSchema> {
        // The files are compile-time constants and a unit test parses every one of them, so a
        // failure here is a build defect, not an input error.
        let schema = Schema::parse_str(file.json)
            .unwrap_or_else(|e| panic!("built-in schema {} does not parse: {e}", file.file));
        Arc::new(KnownSchema {
            fingerprint: fingerprint(&schema),
            schema,
            json: file.json,
        })
    }
}

/// The built-in schemas, parsed once.
#[derive(Debug)]
pub struct BuiltinSchemas {
    /// The reader schema for input events (the newest kept version).
    pub input: Arc<KnownSchema>,
    /// Every kept input version by fingerprint, for single-object decoding.
    pub(crate) input_by_fingerprint: HashMap<u64, Arc<KnownSchema>>,
    pub(crate) outcome: Arc<KnownSchema>,
}

static BUILTIN: LazyLock<BuiltinSchemas> = LazyLock::new(|| {
    let versions: Vec<Arc<KnownSchema>> = INPUT_SCHEMA_VERSIONS
        .iter()
        .map(KnownSchema::parse)
        .collect();
    let input = versions
        .last()
        .cloned()
        .expect("INPUT_SCHEMA_VERSIONS lists at least one schema");
    BuiltinSchemas {
        input,
        input_by_fingerprint: versions.into_iter().map(|s| (s.fingerprint, s)).collect(),
        outcome: KnownSchema::parse(&OUTCOME_SCHEMA),
    }
});

/// The built-in schemas, parsed on first use.
pub fn builtin() -> &'static BuiltinSchemas {
    &BUILTIN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_file_parses_standalone_in_the_contract_namespace() {
        for file in INPUT_SCHEMA_VERSIONS.iter().chain([&OUTCOME_SCHEMA]) {
            let schema = Schema::parse_str(file.json).expect(file.file);
            let Schema::Record(record) = schema else {
                panic!("{} is not a record", file.file)
            };
            assert_eq!(
                record.name.namespace.as_deref(),
                Some("mpp.registration.v1")
            );
        }
    }

    #[test]
    fn input_schema_fields_are_in_contract_order() {
        let Schema::Record(record) = &builtin().input.schema else {
            panic!("not a record")
        };
        let names: Vec<&str> = record.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "eventId",
                "occurredAt",
                "referenceMerchantId",
                "registrationRequestId",
                "decision",
                "rejectionReason",
                "pspId"
            ]
        );
    }

    #[test]
    fn outcome_schema_fields_are_in_contract_order() {
        let Schema::Record(record) = &builtin().outcome.schema else {
            panic!("not a record")
        };
        let names: Vec<&str> = record.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "eventId",
                "referenceMerchantId",
                "registrationRequestId",
                "decision",
                "outcome",
                "resultStatus",
                "resultCode",
                "resultMessage",
                "httpStatus",
                "attempts",
                "firstAttemptAt",
                "completedAt",
                "sourceTopic",
                "sourcePartition",
                "sourceOffset",
                "error"
            ]
        );
    }

    #[test]
    fn crc64_avro_agrees_with_apache_avro_rabin() {
        use apache_avro::rabin::Rabin;
        let schema = Schema::parse_str(r#"{"type":"enum","name":"E","symbols":["A"]}"#)
            .expect("enum parses");
        let theirs = schema.fingerprint::<Rabin>().bytes;
        assert_eq!(
            fingerprint(&schema).to_le_bytes().as_slice(),
            theirs.as_slice()
        );
    }

    #[test]
    fn logical_types_collapse_to_their_primitive_in_canonical_form() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"r","fields":[
                {"name":"a","type":{"type":"string","logicalType":"uuid"}},
                {"name":"b","type":["null",{"type":"long","logicalType":"timestamp-millis"}]}]}"#,
        )
        .expect("record parses");
        assert_eq!(
            canonical_form(&schema),
            r#"{"name":"r","type":"record","fields":[{"name":"a","type":"string"},{"name":"b","type":["null","long"]}]}"#
        );
    }

    #[test]
    fn fingerprint_matches_the_avro_specification_example() {
        // The spec's canonical form of `"int"` is `"int"`; its CRC-64-AVRO is 0x7275d51a3f395c8f
        // (Avro's interop test data, schema-tests.txt).
        let schema = Schema::parse_str(r#""int""#).expect("int parses");
        assert_eq!(fingerprint(&schema), 0x7275_d51a_3f39_5c8f);
    }
}
