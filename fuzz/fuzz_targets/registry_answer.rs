#![no_main]

libfuzzer_sys::fuzz_target!(
    init: {
        // libfuzzer-sys's panic hook aborts on every panic, even one the code under test catches
        // on purpose: the registry client catches apache-avro's schema parser panics. An uncaught
        // panic still aborts (libfuzzer-sys catches it and aborts), so no crash is lost; replay
        // the artifact with tests/it/fuzz_corpus.rs to read its message.
        std::panic::set_hook(Box::new(|_| {}));
    },
    |data: &[u8]| regnotify::fuzzing::registry_answer(data)
);
