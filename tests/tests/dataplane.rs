//! The dataplane's programs, run by the kernel on crafted frames (BPF_PROG_TEST_RUN).
use mesh_tests::fixture::Dataplane;

#[test]
fn programs_pass_the_verifier() {
    let _dp = Dataplane::new().expect("dataplane loads");
}
