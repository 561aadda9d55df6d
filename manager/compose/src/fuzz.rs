//! Property tests of the loader and the conversion: no bytes and no mutation of a real
//! stack file make either panic, and every service the conversion plans is valid. `cargo test` runs 256 cases each; `cargo xtask fuzz parsers` runs them with
//! many more (`PROPTEST_CASES`).

use std::path::{Path, PathBuf};

use proptest::prelude::*;

use crate::{Environment, File, emit, load};

fn load_text(text: String) {
    let env: Environment = [("TAG".to_owned(), "1".to_owned())].into_iter().collect();
    let read = |_: &Path| Ok::<_, std::io::Error>("A=1\nB\n".to_owned());
    let file = File {
        name: "fuzz.yml".into(),
        dir: PathBuf::from("/fuzz"),
        text,
    };
    if let Ok(loaded) = load(&[file.clone(), file], &env, &read) {
        let _ = emit::to_yaml(&loaded.config);
        let _ = loaded.warning();
        let data = |_: &Path| Ok::<_, std::io::Error>(b"data".to_vec());
        if let Ok(plan) = crate::convert::convert("fuzz", &loaded.config, &data) {
            for service in &plan.services {
                assert!(service.validate().is_ok(), "{service:?}");
            }
        }
    }
}

/// A real stack file (or docker's full example) as published, with `edits` applied (a
/// byte set at an offset, or the text cut there), so most inputs are nearly valid.
fn edited_real(which: usize, edits: &[(usize, u8, bool)]) -> String {
    let texts = crate::tests::REAL
        .iter()
        .map(|name| crate::tests::real(name))
        .chain([include_str!("testdata/docker-cli_full-example.yml")])
        .collect::<Vec<_>>();
    let mut bytes = texts[which % texts.len()].as_bytes().to_vec();
    for &(at, byte, cut) in edits {
        if bytes.is_empty() {
            break;
        }
        let at = at % bytes.len();
        if cut {
            bytes.truncate(at);
        } else {
            bytes[at] = byte;
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

proptest! {
    #[test]
    fn fuzz_compose_loader_never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        load_text(String::from_utf8_lossy(&bytes).into_owned());
    }

    #[test]
    fn fuzz_compose_loader_never_panics_on_yaml_like_text(text in "[a-z:\\-\\[\\]{}&*<>|'\"$ \n\t#!?,.0-9]{0,256}") {
        load_text(text);
    }

    #[test]
    fn fuzz_compose_loader_never_panics_on_mutated_stacks(
        which in 0usize..16,
        edits in proptest::collection::vec((any::<usize>(), prop_oneof![Just(b' '), Just(b'\n'), Just(b':'), Just(b'-'), Just(b'$'), Just(b'{'), Just(b'['), Just(b'&'), Just(b'*'), any::<u8>()], any::<bool>()), 1..6),
    ) {
        load_text(edited_real(which, &edits));
    }
}
