//! Any word through BuildKit's word expansion and the .dockerignore matcher.
#![no_main]

use std::collections::BTreeMap;

use frontend::ignore::{PatternMatcher, read_ignore_file};
use frontend::shell::Lex;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let env: BTreeMap<String, String> =
        [("A".to_string(), "a b*c".to_string()), ("E".to_string(), String::new())].into();
    for escape in ['\\', '`'] {
        let lex = Lex::new(escape);
        assert_eq!(lex.process_word(&text, &env).is_err(), lex.process_words(&text, &env).is_err());
    }
    let (patterns, path) = text.split_once('\0').unwrap_or((&text, "a/b/c"));
    if let Ok(pm) = PatternMatcher::new(&read_ignore_file(patterns)) {
        let _ = pm.matches_or_parent_matches(path);
        let _ = pm.may_include_under(path);
    }
});
