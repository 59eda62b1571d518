//! What `s2uc` reads that it did not write itself, from one input: the
//! text a user pastes after signing in (`s2uc login`: the code alone, or
//! the whole redirect URL), and the login store's JSON (a file the user's
//! own tools may have edited or truncated).
//!
//! Checked on every input: nothing panics; a pasted text yields a code only
//! if it is non-empty printable ASCII, the trimmed text itself when it is
//! not a URL, and never for a URL whose state is not this login's; a store
//! that parses writes out as JSON that parses back to the same JSON.

use control::client::LoginStore;
use control::client::login::code_from_pasted;

/// The state of the login the fuzzer's URLs are checked against.
const STATE: &[u8] = b"fuzz-state-0123456789";

/// Checks one input (the fuzz target's body); false when the bytes do not
/// decode into an input, which libFuzzer then leaves out of the corpus.
pub fn check_input(data: &[u8]) -> bool {
    let Ok(text) =
        <&str as arbitrary::Arbitrary>::arbitrary_take_rest(arbitrary::Unstructured::new(data))
    else {
        return false;
    };
    match code_from_pasted(text, STATE) {
        Ok(code) => {
            assert!(!code.is_empty(), "{text:?} gave an empty code");
            assert!(code.chars().all(|c| c.is_ascii_graphic()), "{text:?}");
            let trimmed = text.trim();
            if trimmed.starts_with("https://") || trimmed.starts_with("http://") {
                // URL parsing drops tabs and newlines inside the URL, and
                // the state may be percent-encoded.
                let squeezed: String = trimmed
                    .chars()
                    .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
                    .collect();
                assert!(
                    squeezed.contains("fuzz-state-0123456789") || squeezed.contains('%'),
                    "{text:?} gave a code without this login's state"
                );
            } else {
                assert_eq!(code.as_str(), trimmed, "{text:?}");
            }
        }
        Err(err) => assert!(!err.to_string().is_empty()),
    }

    if let Ok(store) = LoginStore::from_json(text) {
        let written = store.to_json().expect("a parsed store writes out");
        let again = LoginStore::from_json(&written).expect("what was written parses");
        assert_eq!(
            again.to_json().expect("writes out again"),
            written,
            "{text:?}"
        );
    }
    true
}
