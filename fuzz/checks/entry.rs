// The libFuzzer entry every target includes after its `mod check`: the
// bytes go to the check, and an input that does not decode is left out of
// the corpus.
libfuzzer_sys::fuzz_target!(|data: &[u8]| -> libfuzzer_sys::Corpus {
    if check::check_input(data) {
        libfuzzer_sys::Corpus::Keep
    } else {
        libfuzzer_sys::Corpus::Reject
    }
});
