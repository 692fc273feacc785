//! The fuzz corpora replayed on stable: every file under `fuzz/corpus/<target>/` (the seeds, and
//! every input a fuzzer found that crashed, hung or ran out of memory once fixed) goes through the
//! same entry point of `regnotify::fuzzing` that the cargo-fuzz target calls. A panic here is a
//! regression of a fixed bug, or a seed that no longer holds a law.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

#[test]
fn every_corpus_file_replays_without_breaking_a_law() {
    let root = Path::new("fuzz/corpus");
    let mut directories: Vec<String> = std::fs::read_dir(root)
        .expect("fuzz/corpus")
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    directories.sort();
    let mut targets: Vec<String> = regnotify::fuzzing::TARGETS
        .iter()
        .map(ToString::to_string)
        .collect();
    targets.sort();
    assert_eq!(directories, targets, "one corpus directory per fuzz target");

    for target in regnotify::fuzzing::TARGETS {
        let mut files: Vec<_> = std::fs::read_dir(root.join(target))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{target}: empty corpus");
        for file in files {
            let data = std::fs::read(&file).unwrap();
            let replayed = std::panic::catch_unwind(|| regnotify::fuzzing::run(target, &data));
            assert!(
                matches!(replayed, Ok(true)),
                "{target}: {} breaks a law (see the panic above)",
                file.display()
            );
        }
    }
}

/// The seeds reach the code they are meant for: each framing decodes through the registry stub,
/// so the fuzzer starts from inputs that get past the framing and the schema lookup.
#[test]
fn the_decoder_seeds_decode_in_every_framing() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (seed, encoding) in [
        ("raw", regnotify::config::InputEncoding::Raw),
        ("confluent-id1", regnotify::config::InputEncoding::Confluent),
        (
            "confluent-id2-evolved",
            regnotify::config::InputEncoding::Confluent,
        ),
        (
            "single-object",
            regnotify::config::InputEncoding::SingleObject,
        ),
        ("auto-confluent", regnotify::config::InputEncoding::Auto),
    ] {
        let data = std::fs::read(Path::new("fuzz/corpus/decode_input").join(seed)).unwrap();
        let decoder = regnotify::fuzzing::decoder(encoding);
        let event = runtime.block_on(decoder.decode(&data[1..]));
        assert!(event.is_ok(), "{seed}: {event:?}");
    }
}
