//! Compile-time tests of `#[metabridge::service]`: a full service compiles, and each
//! misuse fails with a clear message on the right span.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass_*.rs");
    t.compile_fail("tests/ui/fail_*.rs");
}
